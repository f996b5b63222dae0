"""Merge recipes: a mergekit configuration, accepted verbatim, plus pearl-bot's own sections.

A recipe file is the YAML that mergekit users already write (`models:` or `slices:`,
`base_model`, `merge_method`, `parameters`, `dtype`, ...) with optional sections that mergekit
ignores:

- `publish`: the target Hub repo and how a release reaches it (commit or pull request, tag);
- `card`: the model card template, license, language, tags and extra template variables;
- `scores`: where benchmark results come from (lm-eval JSON files, parents' cards, a command);
- `build`: how the merge runs (numeric mode, DARE seed, shard size).

Validation is stricter than mergekit's: unknown parameter names, a density outside [0, 1], a
missing required `weight` and malformed gradients are errors that name the recipe file and the
field path (`models[2].parameters.density`). Unknown keys inside pearl-bot's own sections are
errors; unknown mergekit keys are kept and passed through to `mergekit_config.yml`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pearl_bot.errors import RecipeError
from pearl_bot.merge.spec import MethodSpec

#: Top-level sections that belong to pearl-bot; everything else is mergekit's.
PEARL_SECTIONS = ("publish", "card", "scores", "build")

# Hub repo ids as the Hub accepts them: an optional namespace, then a name; letters, digits,
# '-', '_' and '.', no '--' or '..', at most 96 characters.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


# --------------------------------------------------------------------------------------------
# Model references
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """One model named by a recipe: a Hub repo (optionally at a revision) or a local folder.

    `key` is the reference as written in the recipe; the merge engine and the downloader use it
    to map each reference to the local folder that holds its files.
    """

    key: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        """A short display name: the repo id or the folder name."""
        if self.repo_id is not None:
            return self.repo_id
        assert self.path is not None
        return self.path.name

    def __str__(self) -> str:
        return self.key


def parse_model_ref(value: Any, *, base_dir: Path | None = None) -> ModelRef:
    """Parse a model reference (`org/name`, `org/name@rev`, a local path, or mergekit's
    `{path, revision}` mapping). Raises ValueError with a readable message."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"path", "revision"}
        if unknown or "path" not in value:
            raise ValueError("a model mapping takes `path` and an optional `revision`")
        path, revision = str(value["path"]), value.get("revision")
        key = path if revision is None else f"{path}@{revision}"
        return _ref_from_parts(key, path, None if revision is None else str(revision), base_dir)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a Hub repo id or a local path, got {value!r}")
    value = value.strip()
    if "+" in value and not _looks_like_path(value, base_dir):
        raise ValueError(f"LoRA references ({value!r}) are not supported yet; merge the LoRA first")
    if _looks_like_path(value, base_dir):
        return _ref_from_parts(value, value, None, base_dir)
    name, at, revision = value.partition("@")
    if at and not revision.strip():
        raise ValueError(
            f"{value!r} names no revision after '@'; write 'org/name@<branch|tag|sha>'"
        )
    return _ref_from_parts(value, name, revision or None, base_dir)


def _looks_like_path(value: str, base_dir: Path | None) -> bool:
    if value.startswith(_PATH_PREFIXES):
        return True
    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    return candidate.is_dir()


def _ref_from_parts(key: str, name: str, revision: str | None, base_dir: Path | None) -> ModelRef:
    if _looks_like_path(name, base_dir):
        path = Path(name).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_dir():
            raise ValueError(f"local folder {name!r} does not exist (looked for {path})")
        return ModelRef(key=key, path=path.resolve(), revision=None)
    if not is_repo_id(name):
        raise ValueError(
            f"{name!r} is neither a Hub repo id ('org/name') nor an existing local folder"
        )
    return ModelRef(key=key, repo_id=name, revision=revision)


def is_repo_id(value: str) -> bool:
    """Whether `value` is a syntactically valid Hub repo id."""
    return (
        len(value) <= 96
        and bool(_REPO_ID.match(value))
        and "--" not in value
        and ".." not in value
        and not value.endswith((".git", "."))
    )


# --------------------------------------------------------------------------------------------
# Raw YAML shape (pydantic)
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishSection(_Section):
    """Where and how a release is published."""

    repo_id: str
    private: bool = False
    create_pr: bool = True
    #: The branch a release targets (and a pull request is opened against).
    revision: str = "main"
    #: Optional tag per release; `{date}` (UTC, YYYYMMDD) and `{short_sha}` are substituted.
    tag: str | None = None

    @field_validator("repo_id")
    @classmethod
    def _check_repo_id(cls, value: str) -> str:
        if not is_repo_id(value) or "/" not in value:
            raise ValueError(f"{value!r} is not a Hub repo id of the form 'org/name'")
        return value


class CardSection(_Section):
    """The model card: template, metadata and extra template variables."""

    template: str | None = None
    title: str | None = None
    summary: str | None = None
    license: str | None = None
    language: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    pipeline_tag: str = "text-generation"
    vars: dict[str, Any] = Field(default_factory=dict)

    @field_validator("language", "tags", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ScoresSection(_Section):
    """Where benchmark results come from."""

    lm_eval: list[str] = Field(default_factory=list)
    parents: bool = False
    command: str | None = None

    @field_validator("lm_eval", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class BuildSection(_Section):
    """How the merge runs; the CLI flags of `pearl-bot merge` override these."""

    numerics: Literal["precise", "mergekit"] = "precise"
    seed: int = 0
    shard_size: str | int = "5GB"


class SourceData(BaseModel):
    """One entry of `models:` or of a slice's `sources:`, as written."""

    model_config = ConfigDict(extra="allow")

    model: str | dict[str, Any]
    parameters: dict[str, Any] = Field(default_factory=dict)
    layer_range: tuple[int, int] | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class SliceData(BaseModel):
    """One entry of `slices:`, as written."""

    model_config = ConfigDict(extra="allow")

    sources: list[SourceData]
    base_model: str | dict[str, Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class RecipeData(BaseModel):
    """The recipe file as YAML, validated for shape only; `Recipe` checks the semantics."""

    model_config = ConfigDict(extra="allow")

    merge_method: str
    models: list[SourceData] | None = None
    slices: list[SliceData] | None = None
    base_model: str | dict[str, Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None
    publish: PublishSection | None = None
    card: CardSection = Field(default_factory=CardSection)
    scores: ScoresSection = Field(default_factory=ScoresSection)
    build: BuildSection = Field(default_factory=BuildSection)

    @field_validator("parameters", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


# --------------------------------------------------------------------------------------------
# The validated recipe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputModel:
    """A model listed in the recipe, with its own parameters and where it was written."""

    ref: ModelRef
    parameters: dict[str, Any]
    layer_range: tuple[int, int] | None
    field: str


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Build one with `load_recipe` or `parse_recipe`."""

    path: Path | None
    text: str
    data: RecipeData
    method: MethodSpec
    base_model: ModelRef | None
    models: tuple[InputModel, ...]
    #: Global parameters: the top-level `parameters`, overlaid by the slice's own.
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def merge_method(self) -> str:
        return self.method.name

    @property
    def dtype(self) -> str | None:
        return normalize_dtype(self.data.dtype)

    @property
    def out_dtype(self) -> str | None:
        return normalize_dtype(self.data.out_dtype)

    @property
    def publish(self) -> PublishSection | None:
        return self.data.publish

    @property
    def card(self) -> CardSection:
        return self.data.card

    @property
    def scores(self) -> ScoresSection:
        return self.data.scores

    @property
    def build(self) -> BuildSection:
        return self.data.build

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the recipe are resolved against."""
        return self.path.parent if self.path is not None else Path.cwd()

    @property
    def sha256(self) -> str:
        """Hash of the recipe text as written."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def upstreams(self) -> list[ModelRef]:
        """Every model the merge reads, base first, each once, in recipe order."""
        refs = [self.base_model] if self.base_model is not None else []
        for model in self.models:
            if model.ref not in refs:
                refs.append(model.ref)
        return refs

    def non_base_models(self) -> list[InputModel]:
        """The listed models other than the base (the task vectors of TIES & co.)."""
        return [m for m in self.models if m.ref != self.base_model]

    def mergekit_config(self) -> dict[str, Any]:
        """The recipe's mergekit part as a mapping (pearl-bot sections removed)."""
        raw = yaml.safe_load(self.text)
        return {k: v for k, v in raw.items() if k not in PEARL_SECTIONS}

    def mergekit_yaml(self) -> str:
        """The recipe's mergekit part as YAML text, comments kept, pearl-bot sections removed."""
        return strip_sections(self.text, PEARL_SECTIONS)


def strip_sections(text: str, sections: Sequence[str]) -> str:
    """Remove top-level YAML blocks named `sections` from `text`, keeping everything else."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        top_level = bool(line[:1].strip()) and not line.startswith("#")
        if top_level:
            skipping = line.split(":", 1)[0].strip() in sections
        if not skipping:
            kept.append(line)
    return "".join(kept).rstrip() + "\n"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate the recipe file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", path=path, hint="check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read the recipe file ({err})", path=path) from err
    return parse_recipe(text, path=path)


def parse_recipe(text: str, *, path: str | Path | None = None) -> Recipe:
    """Validate recipe `text`; `path` names the file in errors and anchors relative paths."""
    path = Path(path).resolve() if path is not None else None
    raw = _load_yaml(text, path)
    try:
        data = RecipeData.model_validate(raw)
    except ValidationError as err:
        raise _recipe_error_from(err, path) from None
    # Imported here: the checks build a `Recipe`, which this module defines.
    from pearl_bot.recipe_checks import validate

    return validate(data, text, path)


def _load_yaml(text: str, path: Path | None) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        message = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        raise RecipeError(message, path=path, field=where) from None
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise RecipeError(
            f"the recipe must be a YAML mapping, but the file is {kind}",
            path=path,
            hint="start from an example in examples/",
        )
    return raw


def format_field(loc: Sequence[str | int]) -> str:
    """Format a pydantic location tuple as a field path: `models[2].parameters.density`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _recipe_error_from(err: ValidationError, path: Path | None) -> RecipeError:
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        section = loc[0] if loc else "section"
        msg = f"unknown key in the `{section}` section"
        known = _section_keys(str(section))
        if known:
            msg += f"; known keys: {', '.join(known)}"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif "input" in first and first["type"] != "missing":
        msg = f"{msg} (got {first['input']!r})"
    return RecipeError(msg, path=path, field=format_field(loc))


def _section_keys(section: str) -> list[str]:
    sections: dict[str, type[_Section]] = {
        "publish": PublishSection,
        "card": CardSection,
        "scores": ScoresSection,
        "build": BuildSection,
    }
    model = sections.get(section)
    return sorted(model.model_fields) if model else []


def normalize_dtype(value: str | None) -> str | None:
    """A dtype name without mergekit's optional `torch.` prefix."""
    return None if value is None else value.removeprefix("torch.")
