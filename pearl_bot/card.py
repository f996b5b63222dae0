"""The model card: Hub metadata through `ModelCardData`, a body rendered from a Jinja template.

The bot owns its card and regenerates it whole on every release. The default template is
`templates/model_card.md.j2` (shipped in the wheel as `pearl_bot/templates/`); a recipe may
point `card.template` at its own. Templates run in a sandboxed Jinja environment with strict
undefined variables, so a missing value fails the run instead of printing nothing.

Template context (every name is always defined):

- `title`, `summary`: from the recipe's `card:` section (trusted markdown);
- `repo_id`: the target repo (None for a local build); `tool_version`: pearl-bot's version;
- `released`: False when rendered without a lock (revisions unknown, marked "unreleased");
- `recipe`: `text` (the whole file), `name`, `sha256`, `dtype`;
- `lock`: the `Lock`, or None;
- `method`: `name`, `pretty_name`, `paper_url`, `parameters` ({name: formatted value});
- `upstreams`: `UpstreamEntry` items, base first (id, role, revision, license, parameters,
  weight, density, link, ancestors);
- `scores`: `ScoreTable` (columns, rows, sources); `changelog`: `Changelog`;
- `card_data`: the YAML header; `license`; `vars`: the recipe's `card.vars`.

Text that comes from upstream cards is escaped on output: every `{{ }}` value that is not
explicitly trusted has markdown and HTML metacharacters escaped and newlines flattened.

Upstream cards are read by `pearl_bot.upstream_cards` (its `UpstreamCard`,
`fetch_upstream_cards` and `parse_upstream_card` are re-exported here); the scores table is
built by `pearl_bot.score_table`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from pydantic import ValidationError

from pearl_bot import __version__
from pearl_bot.errors import CardError
from pearl_bot.lock import Lock, LockedUpstream
from pearl_bot.recipe import ModelRef, Recipe, is_repo_id
from pearl_bot.score_table import score_table
from pearl_bot.scores import Scores, collect_scores
from pearl_bot.upstream_cards import HUB_URL
from pearl_bot.upstream_cards import UpstreamCard as UpstreamCard
from pearl_bot.upstream_cards import fetch_upstream_cards as fetch_upstream_cards
from pearl_bot.upstream_cards import parse_upstream_card as parse_upstream_card

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "model_card.md.j2"
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+\-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


# --------------------------------------------------------------------------------------------
# The context records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ancestor:
    """A model an upstream's card names as its own `base_model`."""

    name: str
    link: Markup | None


@dataclass(frozen=True)
class UpstreamEntry:
    """One row of the lineage table."""

    key: str
    name: str
    repo_id: str | None
    role: Literal["base", "merged"]
    revision: str | None
    short_revision: str | None
    revision_url: Markup | None
    link: Markup | None
    license: str | None
    parameters: dict[str, str]
    weight: str
    density: str
    ancestors: list[Ancestor]
    relation: str | None
    card_problems: list[str]


@dataclass(frozen=True)
class Move:
    """One upstream whose revision changed since the previous release."""

    name: str
    old: str
    new: str
    old_url: Markup | None
    new_url: Markup | None
    commits_url: Markup | None


@dataclass(frozen=True)
class Changelog:
    """The previous release's lock against this one."""

    status: Literal["initial", "changed", "unchanged", "unknown", "unreleased"]
    moves: list[Move] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    recipe_changed: bool = False
    numerics_changed: bool = False


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_card(
    recipe: Recipe,
    *,
    lock: Lock,
    previous: Lock | None,
    scores: Scores,
    repo_id: str | None,
    upstream_cards: dict[str, UpstreamCard] | None = None,
) -> str:
    """The full README.md of a release built from `lock`; `previous` is the last release's."""
    changelog = compare_locks(previous, lock)
    return _render(recipe, lock, changelog, scores, repo_id, upstream_cards or {})


def render_card_file(
    recipe: Recipe, out: Path | None, *, lock_path: Path | None, score_files: list[str]
) -> str:
    """Render the card without merging; write it to `out` atomically when given.

    Without a lock nothing is resolved over the network: the lineage shows the references as
    written, marked unreleased. With a lock, upstream cards are read at the locked revisions.
    Returns the card's text.
    """
    lock = _read_lock(lock_path) if lock_path is not None else None
    cards = fetch_upstream_cards(lock) if lock is not None else {}
    work_dir = out.parent if out is not None else Path.cwd()
    scores = collect_scores(
        recipe, model_dir=None, upstream_cards=cards, work_dir=work_dir, extra_files=score_files
    )
    changelog = Changelog(status="unknown" if lock is not None else "unreleased")
    repo_id = recipe.publish.repo_id if recipe.publish is not None else None
    text = _render(recipe, lock, changelog, scores, repo_id, cards)
    if out is not None:
        write_atomically(out, text)
        logger.info("card written to %s", out)
    return text


def _read_lock(path: Path) -> Lock:
    try:
        return Lock.read(path)
    except (OSError, ValueError, ValidationError) as err:
        raise CardError(
            f"cannot read the lock file {path} ({_one_line(str(err))[:300]})",
            path=path,
            hint="pass the pearl.lock.json of a release (from the target repo) or omit --lock",
        ) from None


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a failure leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render(
    recipe: Recipe,
    lock: Lock | None,
    changelog: Changelog,
    scores: Scores,
    repo_id: str | None,
    cards: Mapping[str, UpstreamCard],
) -> str:
    entries = upstream_entries(recipe, lock, cards)
    license_ = resolve_license(recipe, entries, cards)
    card_data = build_card_data(recipe, entries, scores, repo_id, license_)
    context = {
        "title": Markup(recipe.card.title or _default_title(recipe, repo_id)),
        "summary": Markup(recipe.card.summary or ""),
        "repo_id": repo_id,
        "tool_version": __version__,
        "released": lock is not None,
        "recipe": _recipe_context(recipe),
        "lock": lock,
        "method": _method_context(recipe),
        "upstreams": entries,
        "scores": score_table(scores),
        "changelog": changelog,
        "card_data": Markup(card_data.to_yaml()),
        "license": license_,
        "vars": _trusted(recipe.card.vars),
    }
    template = template_path(recipe)
    text = render_template(template, context)
    check_header(text, template)
    return text


def _default_title(recipe: Recipe, repo_id: str | None) -> str:
    if repo_id is not None:
        return repo_id.split("/")[-1]
    return recipe.path.stem if recipe.path is not None else "Merged model"


def _trusted(value: Any) -> Any:
    """Recipe-provided values may carry markdown on purpose: mark their strings safe."""
    if isinstance(value, str):
        return Markup(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    return value


def template_path(recipe: Recipe) -> Path:
    """The recipe's `card.template` (relative to the recipe), else the default template."""
    if recipe.card.template is not None:
        path = Path(recipe.card.template).expanduser()
        path = path if path.is_absolute() else recipe.base_dir / path
        if not path.is_file():
            raise CardError(
                f"card.template {recipe.card.template!r} does not exist (looked for {path})",
                path=recipe.path,
                hint="fix the path (relative to the recipe file) or remove card.template",
            )
        return path
    return default_template()


def default_template() -> Path:
    """The shipped template: package data first, then the source tree's `templates/`."""
    packaged = resources.files("pearl_bot") / "templates" / DEFAULT_TEMPLATE
    if packaged.is_file():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / "templates" / DEFAULT_TEMPLATE
    if source.is_file():
        return source
    raise CardError(
        f"the default card template {DEFAULT_TEMPLATE} is missing from the installation",
        path=source,
        hint="reinstall pearl-bot, or set card.template in the recipe",
    )


def render_template(path: Path, context: dict[str, Any]) -> str:
    """Render one template file in the sandbox; every template failure becomes a CardError."""
    env = _environment(path.parent)
    try:
        return env.get_template(path.name).render(context)
    except jinja2.UndefinedError as err:
        line = _template_line(path)
        raise CardError(
            f"card template {path}{line}: undefined variable: {err.message}",
            path=path,
            hint="fix the name in the template or define it under card.vars in the recipe",
        ) from None
    except jinja2.TemplateSyntaxError as err:
        raise CardError(
            f"card template {path}, line {err.lineno}: syntax error: {err.message}",
            path=path,
        ) from None
    except jinja2.TemplateError as err:
        raise CardError(f"card template {path}: {err}", path=path) from None


def _environment(folder: Path) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["code"] = inline_code
    env.filters["fence"] = fenced
    env.filters["verbatim"] = verbatim
    return env


def _template_line(path: Path) -> str:
    """`, line N` of the failing template line, read from the traceback Jinja rewrites."""
    tb: types.TracebackType | None = sys.exc_info()[2]
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).name == path.name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f", line {line}" if line is not None else ""


def _finalize(value: Any) -> Any:
    """Escape every printed value unless it is trusted (`Markup`); None prints as a dash."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return "—"
    return escape_markdown(str(value))


def escape_markdown(text: str) -> str:
    """Make untrusted text inert in markdown: one line, no HTML, no emphasis, links or tables."""
    text = _one_line(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _one_line(text: str) -> str:
    """`text` on one line: control characters and line breaks become single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def inline_code(value: Any) -> Markup:
    """`value` as inline code, with a backtick run longer than any inside it."""
    text = _one_line(str(value))
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{ticks}{pad}{text}{pad}{ticks}")


def verbatim(value: Any) -> Markup:
    """`value` on one line, unescaped: for code blocks, where markdown does not apply."""
    return Markup(_one_line(str(value)))


def fenced(value: Any, language: str = "") -> Markup:
    """`value` as a fenced code block whose fence no line inside can close."""
    text = str(value).rstrip("\n")
    longest = max((len(r) for r in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return Markup(f"{fence}{language}\n{text}\n{fence}")


def check_header(text: str, template: Path) -> None:
    """The rendered card must load back through huggingface_hub with a metadata mapping."""
    try:
        ModelCard(text)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise CardError(
            f"card template {template} produced an invalid metadata header ({_one_line(str(err))})",
            path=template,
            hint="keep `---`, `{{ card_data }}`, `---` as the first three lines of the template",
        ) from None


# --------------------------------------------------------------------------------------------
# Lineage
# --------------------------------------------------------------------------------------------


def upstream_entries(
    recipe: Recipe, lock: Lock | None, cards: Mapping[str, UpstreamCard]
) -> list[UpstreamEntry]:
    """The lineage rows, base first, with locked revisions when `lock` is given."""
    return [_entry(recipe, ref, lock, cards.get(ref.key)) for ref in recipe.upstreams()]


def _entry(
    recipe: Recipe, ref: ModelRef, lock: Lock | None, card: UpstreamCard | None
) -> UpstreamEntry:
    locked = lock.upstream(ref.key) if lock is not None else None
    repo_id = locked.repo_id if locked is not None else ref.repo_id
    revision = locked.revision if locked is not None else None
    is_base = ref == recipe.base_model
    params = _model_parameters(recipe, ref)
    return UpstreamEntry(
        key=ref.key,
        name=repo_id or ref.key,
        repo_id=repo_id,
        role="base" if is_base else "merged",
        revision=revision,
        short_revision=_short(revision),
        revision_url=_commit_url(repo_id, revision),
        link=_repo_url(repo_id),
        license=card.license if card is not None else None,
        parameters={k: format_parameter(v) for k, v in params.items()},
        weight=_effective(recipe, params, "weight", is_base),
        density=_effective(recipe, params, "density", is_base),
        ancestors=[Ancestor(a, _repo_url(a)) for a in (card.base_model if card else ())],
        relation=card.base_model_relation if card is not None else None,
        card_problems=list(card.problems) if card is not None else [],
    )


def _model_parameters(recipe: Recipe, ref: ModelRef) -> dict[str, Any]:
    for model in recipe.models:
        if model.ref == ref and model.parameters:
            return dict(model.parameters)
    return {}


def _effective(recipe: Recipe, params: dict[str, Any], name: str, is_base: bool) -> str:
    """The weight or density a model is merged with: its own, the global one, or the default."""
    spec = recipe.method.param(name)
    if spec is None or (is_base and recipe.method.task_vectors):
        return "—"
    for scope in (params, recipe.parameters):
        if name in scope:
            return format_parameter(scope[name])
    return format_parameter(spec.default) if spec.default is not None else "—"


def format_parameter(value: Any) -> str:
    """A parameter as one line: a number, a gradient `[0, 0.5, 1]`, or per-filter values."""
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        parts = [f"{e.get('filter', 'default')}: {format_parameter(e.get('value'))}" for e in value]
        return "; ".join(parts)
    if isinstance(value, list):
        return "[" + ", ".join(format_parameter(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(revision: str | None) -> str | None:
    if revision is None:
        return None
    if revision.startswith("sha256:"):
        return revision[:15]
    return revision[:7]


def _repo_url(repo_id: str | None) -> Markup | None:
    if repo_id is None or not is_repo_id(repo_id) or "/" not in repo_id:
        return None
    return Markup(f"{HUB_URL}/{quote(repo_id, safe='/')}")


def _commit_url(repo_id: str | None, revision: str | None) -> Markup | None:
    base = _repo_url(repo_id)
    if base is None or revision is None or not _SHA.match(revision):
        return None
    return Markup(f"{base}/commit/{revision}")


def resolve_license(
    recipe: Recipe, entries: list[UpstreamEntry], cards: Mapping[str, UpstreamCard]
) -> str | None:
    """The recipe's license, else the one every upstream declares; disagreement is an error."""
    if recipe.card.license is not None:
        return recipe.card.license
    if not cards:
        return None
    declared = {e.name: e.license for e in entries}
    known = {name: lic for name, lic in declared.items() if lic is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{n}: {lic!r}" for n, lic in known.items())
        logger.warning("upstream licenses disagree (%s)", _one_line(listed))
        raise CardError(
            f"the upstreams declare different licenses ({_one_line(listed)})",
            path=recipe.path,
            hint="choose the merge's license with `card.license` in the recipe",
        )
    values = set(known.values())
    license_ = values.pop() if values else None
    if license_ is not None and not _LICENSE_ID.match(license_):
        logger.warning("upstream license %r is not a Hub license id; left out", license_)
        return None
    missing = [n for n, lic in declared.items() if lic is None]
    if license_ is not None and missing:
        logger.warning("no license declared by %s; license left out", ", ".join(missing))
        return None
    return license_


# --------------------------------------------------------------------------------------------
# Metadata, scores, changelog
# --------------------------------------------------------------------------------------------


def build_card_data(
    recipe: Recipe,
    entries: list[UpstreamEntry],
    scores: Scores,
    repo_id: str | None,
    license_: str | None,
) -> ModelCardData:
    """The YAML header: lineage, tags, license and the merged model's model-index."""
    hub_ids = [e.repo_id for e in entries if e.repo_id is not None]
    tags = ["merge", "mergekit", recipe.method.name, *recipe.card.tags]
    results = eval_results(scores, recipe.card.pipeline_tag)
    return ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        tags=tags,
        library_name="transformers",
        pipeline_tag=recipe.card.pipeline_tag,
        language=list(recipe.card.language) or None,
        license=license_,
        model_name=(repo_id or scores.merged) if results else None,
        eval_results=results or None,
    )


def eval_results(scores: Scores, task_type: str) -> list[EvalResult]:
    """The merged model's scores as `model-index` entries (plain floats, strings only)."""
    results = []
    for score in scores.of(scores.merged):
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=score.dataset_type or score.benchmark,
                dataset_name=score.benchmark,
                dataset_config=score.dataset_config,
                dataset_split=score.dataset_split,
                dataset_args={"num_few_shot": score.n_shot} if score.n_shot is not None else None,
                metric_type=score.metric,
                metric_name=score.metric,
                metric_value=float(score.value),
            )
        )
    return results


def compare_locks(previous: Lock | None, lock: Lock) -> Changelog:
    """What moved between the previous release and this one."""
    if previous is None:
        return Changelog(status="initial")
    old = {u.key: u for u in previous.upstreams}
    new = {u.key: u for u in lock.upstreams}
    moves = [_move(old[k], new[k]) for k in new if k in old and old[k].revision != new[k].revision]
    log = Changelog(
        status="changed",
        moves=moves,
        added=[new[k].repo_id or k for k in new if k not in old],
        removed=[old[k].repo_id or k for k in old if k not in new],
        recipe_changed=previous.recipe_sha256 != lock.recipe_sha256,
        numerics_changed=previous.numerics != lock.numerics,
    )
    if not (log.moves or log.added or log.removed or log.recipe_changed or log.numerics_changed):
        return Changelog(status="unchanged")
    return log


def _move(old: LockedUpstream, new: LockedUpstream) -> Move:
    base = _repo_url(new.repo_id)
    return Move(
        name=new.repo_id or new.key,
        old=_short(old.revision) or "",
        new=_short(new.revision) or "",
        old_url=_commit_url(old.repo_id, old.revision),
        new_url=_commit_url(new.repo_id, new.revision),
        commits_url=Markup(f"{base}/commits/{new.revision}") if base is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Recipe and method
# --------------------------------------------------------------------------------------------


def _recipe_context(recipe: Recipe) -> dict[str, Any]:
    return {
        "text": recipe.text,
        "name": recipe.path.name if recipe.path is not None else "recipe.yml",
        "sha256": recipe.sha256,
        "dtype": recipe.out_dtype or recipe.dtype,
    }


def _method_context(recipe: Recipe) -> dict[str, Any]:
    method = recipe.method
    params = {s.name: s.default for s in method.global_params if s.default is not None}
    params |= recipe.parameters
    return {
        "name": method.name,
        "pretty_name": method.pretty_name,
        "paper_url": Markup(method.paper_url) if method.paper_url else None,
        "parameters": {k: format_parameter(v) for k, v in params.items()},
    }
