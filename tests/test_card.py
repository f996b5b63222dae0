"""The model card: sections, metadata that loads back, upstream cards read from the local Hub,
broken and hostile upstream text, strict templates."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from pearl_bot.card import (
    compare_locks,
    escape_markdown,
    fetch_upstream_cards,
    parse_upstream_card,
    render_card,
    render_card_file,
)
from pearl_bot.cli import main as cli_main
from pearl_bot.errors import CardError
from pearl_bot.lock import Lock, LockedUpstream
from pearl_bot.recipe import Recipe, load_recipe, parse_recipe
from pearl_bot.scores import Scores, collect_scores
from pearl_bot.testing.hub_server import LocalHub

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PEARL = EXAMPLES / "pearl-7b-0210-ties.yml"
PEARL_REPO = "louisbrulenaudet/Pearl-7B-0210-ties"
RESULTS = Path(__file__).parent / "data" / "scores" / "lm_eval_results.json"
CARDS = Path(__file__).parent / "data" / "card"
SHA = re.compile(r"[0-9a-f]{40}")

# Upstream cards of the seed recipe, in the shapes found on the Hub (see tests/data/card/).
PEARL_UPSTREAM_CARDS = {
    "OpenPipe/mistral-ft-optimized-1227": "mistral-ft-optimized.md",
    "louisbrulenaudet/Pearl-7B-slerp": "pearl-7b-slerp.md",
    "WizardLM/WizardMath-7B-V1.1": "broken-model-index.md",
    "cognitivecomputations/WestLake-7B-v2-laser": None,  # no README.md at all
    "CultriX/NeuralTrix-7B-dpo": "neuraltrix.md",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def publish_upstreams(hub: LocalHub, recipe: Recipe, cards: dict[str, str | None]) -> Lock:
    """Commit each upstream's card (a file under tests/data/card, or none) and lock them."""
    upstreams = []
    for ref in recipe.upstreams():
        assert ref.repo_id is not None
        name = cards.get(ref.repo_id)
        files: dict[str, bytes | str | Path] = {"config.json": '{"model_type": "mistral"}'}
        if name is not None:
            files["README.md"] = CARDS / name
        sha = hub.commit(ref.repo_id, files, message="upload")
        role = "base" if ref == recipe.base_model else "model"
        upstreams.append(
            LockedUpstream(
                key=ref.key, repo_id=ref.repo_id, tracked="main", revision=sha, role=role
            )
        )
    return Lock(
        pearl_bot_version="0.1.0",
        recipe_sha256=recipe.sha256,
        merge_method=recipe.merge_method,
        numerics="precise",
        upstreams=tuple(upstreams),
    )


def header(text: str) -> dict[str, Any]:
    """The card's metadata as huggingface_hub loads it back."""
    data = ModelCard(text).data.to_dict()
    assert isinstance(data, dict)
    return data


def section(text: str, title: str) -> str:
    """The body of the `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match is not None, f"section {title!r} missing"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first markdown table in `text`, split on unescaped pipes."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines]


def copy_recipe(tmp_path: Path, source: Path = PEARL, extra: str = "") -> Recipe:
    path = tmp_path / source.name
    path.write_text(source.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return load_recipe(path)


def with_lm_eval(tmp_path: Path) -> Recipe:
    """The seed recipe with the merge's lm-eval results next to it."""
    (tmp_path / "evals").mkdir()
    shutil.copy(RESULTS, tmp_path / "evals" / "results_2026-02-10T03-12-45.json")
    return copy_recipe(tmp_path, extra="  lm_eval: [evals/results_*.json]\n")


@pytest.fixture
def pearl_release(local_hub: LocalHub, tmp_path: Path) -> tuple[Recipe, Lock, dict[str, Any]]:
    """The seed recipe, its upstreams published on the local Hub, their cards read back."""
    recipe = with_lm_eval(tmp_path)
    lock = publish_upstreams(local_hub, recipe, PEARL_UPSTREAM_CARDS)
    return recipe, lock, fetch_upstream_cards(lock)


def render_pearl(
    recipe: Recipe, lock: Lock, cards: dict[str, Any], previous: Lock | None = None
) -> str:
    scores = collect_scores(recipe, model_dir=None, upstream_cards=cards, work_dir=Path("."))
    return render_card(
        recipe,
        lock=lock,
        previous=previous,
        scores=scores,
        repo_id=PEARL_REPO,
        upstream_cards=cards,
    )


# --------------------------------------------------------------------------------------------
# Upstream cards through huggingface_hub
# --------------------------------------------------------------------------------------------


def test_upstream_cards_are_read_at_the_locked_revision(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]], local_hub: LocalHub
) -> None:
    recipe, lock, _ = pearl_release
    slerp = "louisbrulenaudet/Pearl-7B-slerp"
    local_hub.commit(slerp, {"README.md": "---\nlicense: mit\n---\nrelicensed\n"}, message="mit")

    cards = fetch_upstream_cards(lock)

    card = cards[slerp]
    assert card.revision == lock.upstream(slerp).revision  # type: ignore[union-attr]
    assert card.license == "apache-2.0"
    assert card.base_model == ("mlabonne/OmniBeagle-7B", "WizardLM/WizardMath-7B-V1.1")
    assert card.base_model_relation == "merge"
    assert [r.metric_type for r in card.eval_results] == ["acc_norm", "acc", "acc"]
    assert card.problems == ()


def test_broken_model_index_and_missing_card_are_tolerated_with_a_warning(
    local_hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = copy_recipe(tmp_path)
    lock = publish_upstreams(local_hub, recipe, PEARL_UPSTREAM_CARDS)

    with caplog.at_level(logging.WARNING, logger="pearl_bot.upstream_cards"):
        cards = fetch_upstream_cards(lock)

    wizard = cards["WizardLM/WizardMath-7B-V1.1"]
    assert wizard.license == "llama2"  # the rest of the metadata still counts
    assert wizard.eval_results == ()
    assert "metadata is invalid" in wizard.problems[0]
    westlake = cards["cognitivecomputations/WestLake-7B-v2-laser"]
    assert westlake.problems == ("it has no README.md",)
    assert "WizardLM/WizardMath-7B-V1.1" in caplog.text
    assert "cognitivecomputations/WestLake-7B-v2-laser" in caplog.text


def test_an_unreachable_upstream_card_is_a_warning_not_a_failure(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    recipe = copy_recipe(tmp_path)
    lock = publish_upstreams(local_hub, recipe, PEARL_UPSTREAM_CARDS)
    local_hub.delete_repo("CultriX/NeuralTrix-7B-dpo")

    cards = fetch_upstream_cards(lock)

    assert "could not be read" in cards["CultriX/NeuralTrix-7B-dpo"].problems[0]
    assert cards["OpenPipe/mistral-ft-optimized-1227"].license == "apache-2.0"


# --------------------------------------------------------------------------------------------
# The rendered card
# --------------------------------------------------------------------------------------------


def test_header_loads_back_with_lineage_tags_license_and_model_index(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release

    text = render_pearl(recipe, lock, cards)
    meta = header(text)

    ModelCard(text).validate()  # the (local) Hub's metadata check, over HTTP

    assert meta["base_model"] == [u.repo_id for u in recipe.upstreams()]
    assert meta["base_model"][0] == "OpenPipe/mistral-ft-optimized-1227"
    assert meta["base_model_relation"] == "merge"
    assert meta["tags"] == ["merge", "mergekit", "ties", "mistral"]
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "text-generation")
    assert (meta["license"], meta["language"]) == ("apache-2.0", ["en"])
    (entry,) = meta["model-index"]
    assert entry["name"] == PEARL_REPO
    metrics = {r["dataset"]["name"]: r["metrics"][0] for r in entry["results"]}
    assert metrics["arc_challenge"] == {"type": "acc_norm", "value": 68.26, "name": "acc_norm"}
    assert metrics["wikitext"]["value"] == 9.123
    for result in entry["results"]:
        assert isinstance(result["task"]["type"], str)
        assert all(isinstance(result["dataset"][k], str) for k in ("type", "name"))
        assert type(result["metrics"][0]["value"]) is float
        if "config" in result["dataset"]:
            assert isinstance(result["dataset"]["config"], str)


def test_header_has_no_nulls_nans_or_python_objects(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release
    text = render_pearl(recipe, lock, cards)
    block = text.split("---\n")[1]

    assert "null" not in block and ".nan" not in block and "!!python" not in block
    assert yaml.safe_load(block) == header(text)


def test_lineage_table_links_exact_revisions_with_license_weight_and_density(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release

    rows = table_rows(section(render_pearl(recipe, lock, cards), "Lineage"))

    assert [c.strip() for c in rows[0]] == [
        "role", "model", "revision", "license", "weight", "density"
    ]  # fmt: skip
    body = rows[2:]
    assert len(body) == len(lock.upstreams)
    for row, locked in zip(body, lock.upstreams, strict=True):
        role, model, revision, license_, weight, density = (c.strip() for c in row)
        assert role == ("base" if locked.role == "base" else "merged")
        assert f"(https://huggingface.co/{locked.repo_id})" in model
        url = f"https://huggingface.co/{locked.repo_id}/commit/{locked.revision}"
        assert revision == f"[`{locked.revision[:7]}`]({url})"
        expected_license = {"cognitivecomputations/WestLake-7B-v2-laser": "—"}
        assert license_ == expected_license.get(locked.repo_id or "", license_)
        model_params = recipe.models[[m.ref.key for m in recipe.models].index(locked.key)]
        assert weight == str(model_params.parameters.get("weight", "—"))
        assert density == str(model_params.parameters.get("density", "—"))
    assert "| llama2 |" in section(render_pearl(recipe, lock, cards), "Lineage")


def test_lineage_shows_one_more_level_of_ancestry(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release

    lineage = section(render_pearl(recipe, lock, cards), "Lineage")

    assert (
        "- louisbrulenaudet/Pearl-7B-slerp (merge) ← "
        "[mlabonne/OmniBeagle-7B](https://huggingface.co/mlabonne/OmniBeagle-7B), "
        "[WizardLM/WizardMath-7B-V1.1](https://huggingface.co/WizardLM/WizardMath-7B-V1.1)"
    ) in lineage
    assert "- OpenPipe/mistral-ft-optimized-1227 ← [mistralai/Mistral-7B-v0.1]" in lineage
    assert "WestLake-7B-v2-laser was not fully read: it has no README.md" in lineage


def test_scores_table_compares_the_merge_with_its_parents(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release

    scores = section(render_pearl(recipe, lock, cards), "Scores")

    rows = {r[0].strip(): [c.strip() for c in r] for r in table_rows(scores)}
    head = rows["benchmark"]
    assert head[3] == "**this merge**" and "Δ vs best parent" in head[-1]
    col = {name: k for k, name in enumerate(head)}
    arc = rows["arc\\_challenge"]
    # Merge 68.26 against parents 66.12 (mistral-ft) and 70.1 (Pearl-7B-slerp): slerp is best.
    assert arc[col["**this merge**"]] == "68.26 ± 1.36"
    assert arc[col["louisbrulenaudet/Pearl-7B-slerp"]] == "**70.1**"
    assert arc[-1] == "-1.84"
    wikitext = rows["wikitext"]
    # A number with nothing to compare against is not "best".
    assert wikitext[col["**this merge**"]] == "9.123" and wikitext[-1] == "—"
    # The Leaderboard's gsm8k "acc" is lm-eval's exact_match: one row, compared.
    assert rows["gsm8k"][col["**this merge**"]] == "64.14 ± 1.32" and rows["gsm8k"][-1] == "-1.06"
    assert "lm-eval: results\\_2026-02-10T03-12-45.json" in scores
    source_url = cards["louisbrulenaudet/Pearl-7B-slerp"].url
    assert f"]({source_url})" in scores


def test_what_changed_lists_moved_upstreams_with_links(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release
    old = "0" * 40
    moved = [
        u if u.role == "base" else u.model_copy(update={"revision": old}) for u in lock.upstreams
    ]
    previous = lock.model_copy(update={"upstreams": (*moved[:2], *lock.upstreams[2:])})

    changed = section(render_pearl(recipe, lock, cards, previous=previous), "What changed")

    new = lock.upstream("louisbrulenaudet/Pearl-7B-slerp").revision  # type: ignore[union-attr]
    base = "https://huggingface.co/louisbrulenaudet/Pearl-7B-slerp"
    assert changed.strip() == (
        f"- louisbrulenaudet/Pearl-7B-slerp moved from [`0000000`]({base}/commit/{old}) "
        f"to [`{new[:7]}`]({base}/commit/{new}) ([commits]({base}/commits/{new}))."
    )
    initial = section(render_pearl(recipe, lock, cards), "What changed")
    assert initial.strip() == "Initial release."


def test_compare_locks_reports_added_removed_recipe_and_numerics() -> None:
    def up(key: str, revision: str) -> LockedUpstream:
        return LockedUpstream(key=key, repo_id=key, tracked="main", revision=revision)

    old = Lock(
        pearl_bot_version="0.1.0", recipe_sha256="a", merge_method="ties", numerics="precise",
        upstreams=(up("o/base", "1" * 40), up("o/gone", "2" * 40)),
    )  # fmt: skip
    new = old.model_copy(
        update={"recipe_sha256": "b", "upstreams": (up("o/base", "1" * 40), up("o/new", "3" * 40))}
    )

    log = compare_locks(old, new)

    assert (log.status, log.moves, log.added, log.removed) == ("changed", [], ["o/new"], ["o/gone"])
    assert log.recipe_changed and not log.numerics_changed
    assert compare_locks(old, old).status == "unchanged"


def test_recipe_reproduction_and_usage_sections(
    pearl_release: tuple[Recipe, Lock, dict[str, Any]],
) -> None:
    recipe, lock, cards = pearl_release
    text = render_pearl(recipe, lock, cards)

    assert f"```yaml\n{recipe.text.rstrip()}\n```" in section(text, "Recipe")
    assert recipe.sha256 in section(text, "Recipe")
    reproduce = section(text, "Reproduce")
    assert f"hf download {PEARL_REPO} pearl.lock.json" in reproduce
    assert "pearl-bot merge pearl-7b-0210-ties.yml --lock pearl.lock.json --numerics precise" in (
        reproduce
    )
    usage = section(text, "Usage")
    assert f'model_id = "{PEARL_REPO}"' in usage and "AutoModelForCausalLM" in usage
    merge = section(text, "Merge method")
    assert "[TIES](https://arxiv.org/abs/2306.01708)" in merge and "| `normalize` | true |" in merge


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.stem)
def test_every_example_recipe_renders_against_the_local_hub(
    example: Path, local_hub: LocalHub, tmp_path: Path
) -> None:
    recipe = copy_recipe(tmp_path, example)
    cards = {ref.repo_id: "mistral-ft-optimized.md" for ref in recipe.upstreams() if ref.repo_id}
    lock = publish_upstreams(local_hub, recipe, cards)
    upstream_cards = fetch_upstream_cards(lock)
    scores = collect_scores(
        recipe, model_dir=None, upstream_cards=upstream_cards, work_dir=tmp_path
    )

    text = render_card(
        recipe, lock=lock, previous=None, scores=scores, repo_id="org/out",
        upstream_cards=upstream_cards,
    )  # fmt: skip

    meta = header(text)
    assert meta["base_model"] == [u.repo_id for u in lock.upstreams]
    assert meta["license"] == "apache-2.0"  # the recipe's, or all upstreams agree
    for title in ("Merge method", "Lineage", "Scores", "What changed", "Recipe", "Usage"):
        assert section(text, title).strip()
    assert len(table_rows(section(text, "Lineage"))) == len(lock.upstreams) + 2


# --------------------------------------------------------------------------------------------
# License resolution
# --------------------------------------------------------------------------------------------


TWO_MODEL = """\
models:
  - model: org/base
  - model: org/ft
    parameters: {weight: 1.0}
merge_method: task_arithmetic
base_model: org/base
"""


def _two_model_card(license_a: str, license_b: str, card_license: str = "") -> str:
    recipe = parse_recipe(TWO_MODEL + card_license)
    lock_ups = (
        LockedUpstream(key="org/base", repo_id="org/base", revision="a" * 40, role="base"),
        LockedUpstream(key="org/ft", repo_id="org/ft", revision="b" * 40),
    )
    lock = Lock(
        pearl_bot_version="0", recipe_sha256=recipe.sha256, merge_method="task_arithmetic",
        numerics="precise", upstreams=lock_ups,
    )  # fmt: skip
    cards = {
        u.key: parse_upstream_card(
            f"---\nlicense: {lic}\n---\n", key=u.key, repo_id=u.key, revision=u.revision
        )
        for u, lic in zip(lock_ups, (license_a, license_b), strict=True)
    }
    return render_card(
        recipe, lock=lock, previous=None, scores=Scores(), repo_id=None, upstream_cards=cards
    )


def test_license_comes_from_the_upstreams_when_they_agree() -> None:
    assert header(_two_model_card("mit", "mit"))["license"] == "mit"


def test_disagreeing_upstream_licenses_require_the_recipe_to_choose(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(CardError, match=r"different licenses.*'mit'.*'cc-by-nc-4.0'") as err:
        _two_model_card("mit", "cc-by-nc-4.0")
    assert err.value.hint == "choose the merge's license with `card.license` in the recipe"
    assert "licenses disagree" in caplog.text

    chosen = _two_model_card("mit", "cc-by-nc-4.0", card_license="card:\n  license: cc-by-nc-4.0\n")
    assert header(chosen)["license"] == "cc-by-nc-4.0"


def test_local_upstreams_never_appear_in_base_model(tmp_path: Path) -> None:
    (tmp_path / "local-ft").mkdir()
    path = tmp_path / "recipe.yml"
    path.write_text(TWO_MODEL.replace("org/ft", "./local-ft"), encoding="utf-8")
    recipe = load_recipe(path)
    lock = Lock(
        pearl_bot_version="0", recipe_sha256=recipe.sha256, merge_method="task_arithmetic",
        numerics="precise",
        upstreams=(
            LockedUpstream(key="org/base", repo_id="org/base", revision="a" * 40, role="base"),
            LockedUpstream(key="./local-ft", revision="sha256:" + "c" * 64),
        ),
    )  # fmt: skip

    text = render_card(recipe, lock=lock, previous=None, scores=Scores(), repo_id=None)

    assert header(text)["base_model"] == ["org/base"]
    lineage = section(text, "Lineage")
    assert "`./local-ft` (local)" in lineage and "`sha256:cccccccc`" in lineage
    assert str(tmp_path) not in text.split("## Recipe")[0]


# --------------------------------------------------------------------------------------------
# Hostile upstream text
# --------------------------------------------------------------------------------------------


def test_hostile_upstream_text_cannot_break_the_header_or_inject_markup(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    recipe = with_lm_eval(tmp_path)
    cards = dict(PEARL_UPSTREAM_CARDS, **{"CultriX/NeuralTrix-7B-dpo": "hostile.md"})
    lock = publish_upstreams(local_hub, recipe, cards)
    upstream_cards = fetch_upstream_cards(lock)

    text = render_pearl(recipe, lock, upstream_cards)

    meta = header(text)
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == [u.repo_id for u in lock.upstreams]
    body = text.split("\n---\n", 1)[1]
    for needle in ("<script", "<img", "<b>", "<iframe", "\n---\nlicense"):
        assert needle not in body, needle
    for unescaped in (r"(?<!\\)\]\(javascript:", r"(?<!\\)!(?<!\\)\[", r"(?<!\\)\*\*bold"):
        assert not re.search(unescaped, body), unescaped
    assert "&lt;script&gt;" in body
    for title in ("Lineage", "Scores"):
        rows = table_rows(section(text, title))
        assert len({len(row) for row in rows if row}) == 1, f"{title} table columns broken"
    assert len(table_rows(section(text, "Lineage"))) == len(lock.upstreams) + 2


def test_hostile_upstream_license_is_never_taken_into_the_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = _two_model_card('"mit\\n---\\nx: 1"', '"mit\\n---\\nx: 1"')

    assert "license" not in header(text)
    assert "not a Hub license id" in caplog.text


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("a | b", "a \\| b"),
        ("[x](javascript:y)", "\\[x\\](javascript:y)"),
        ("line\n# heading\r\n---", "line \\# heading ---"),
        (
            "**bold** _it_ `code` ~~s~~ ![i]",
            "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\~\\~s\\~\\~ \\!\\[i\\]",
        ),
        ("A&amp;B", "A&amp;amp;B"),
    ],
)
def test_escape_markdown(raw: str, escaped: str) -> None:
    assert escape_markdown(raw) == escaped


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _with_template(tmp_path: Path, template: str, extra: str = "") -> Recipe:
    (tmp_path / "custom.md.j2").write_text(template, encoding="utf-8")
    path = tmp_path / "recipe.yml"
    path.write_text(TWO_MODEL + "card:\n  template: custom.md.j2\n" + extra, encoding="utf-8")
    return load_recipe(path)


def _render_unreleased(recipe: Recipe, tmp_path: Path) -> str:
    out = tmp_path / "out" / "README.md"
    text = render_card_file(recipe, out, lock_path=None, score_files=[])
    assert out.read_text(encoding="utf-8") == text
    return text


def test_an_undefined_template_variable_fails_with_its_name_and_the_template(
    tmp_path: Path,
) -> None:
    recipe = _with_template(
        tmp_path, "---\n{{ card_data }}\n---\n\n# {{ title }}\n{{ nosuch_value }}\n"
    )

    with pytest.raises(CardError) as err:
        _render_unreleased(recipe, tmp_path)

    message = str(err.value)
    assert "'nosuch_value' is undefined" in message
    assert f"{tmp_path / 'custom.md.j2'}, line 6" in message
    assert not (tmp_path / "out" / "README.md").exists()


def test_an_undefined_attribute_names_the_attribute(tmp_path: Path) -> None:
    recipe = _with_template(tmp_path, "---\n{{ card_data }}\n---\n{{ method.nosuch_field }}\n")

    with pytest.raises(CardError, match="nosuch_field"):
        _render_unreleased(recipe, tmp_path)


def test_custom_template_with_card_vars(tmp_path: Path) -> None:
    recipe = _with_template(
        tmp_path,
        "---\n{{ card_data }}\n---\n# {{ title }}\n\n{{ vars.team }} built {{ method.name }}.\n",
        extra="  title: My merge\n  vars:\n    team: The **A** team\n",
    )

    text = _render_unreleased(recipe, tmp_path)

    assert text.endswith("# My merge\n\nThe **A** team built task\\_arithmetic.\n")


def test_the_sandbox_refuses_unsafe_attribute_access(tmp_path: Path) -> None:
    recipe = _with_template(tmp_path, "---\n{{ card_data }}\n---\n{{ ''.__class__.__mro__ }}\n")

    with pytest.raises(CardError, match="custom.md.j2"):
        _render_unreleased(recipe, tmp_path)


def test_a_template_that_breaks_the_header_is_refused(tmp_path: Path) -> None:
    recipe = _with_template(tmp_path, "---\n- just\n- a list\n---\nbody\n")

    with pytest.raises(CardError, match="invalid metadata header"):
        _render_unreleased(recipe, tmp_path)


def test_missing_custom_template_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yml"
    path.write_text(TWO_MODEL + "card:\n  template: nope.j2\n", encoding="utf-8")

    with pytest.raises(CardError, match="card.template 'nope.j2' does not exist"):
        _render_unreleased(load_recipe(path), tmp_path)


# --------------------------------------------------------------------------------------------
# `pearl-bot card`
# --------------------------------------------------------------------------------------------


def test_card_command_without_lock_marks_references_unreleased(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = copy_recipe(tmp_path)
    out = tmp_path / "README.md"

    code = cli_main(["card", str(recipe.path), "--out", str(out)])

    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert "**Unreleased.**" in text
    rows = table_rows(section(text, "Lineage"))[2:]
    assert [r[2].strip() for r in rows] == ["unreleased"] * 5
    assert not SHA.search(section(text, "Lineage"))
    assert header(text)["base_model"] == [u.repo_id for u in recipe.upstreams()]
    assert section(text, "What changed").strip() == "Not released yet."


def test_card_command_with_lock_and_scores_reads_upstream_cards(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = copy_recipe(tmp_path)
    lock = publish_upstreams(local_hub, recipe, PEARL_UPSTREAM_CARDS)
    (tmp_path / "pearl.lock.json").write_text(lock.to_json(), encoding="utf-8")
    shutil.copy(RESULTS, tmp_path / "results_x.json")
    monkeypatch.chdir(tmp_path)

    code = cli_main(
        ["card", str(recipe.path), "--lock", "pearl.lock.json", "--scores", "results_*.json",
         "--out", "card/README.md"]
    )  # fmt: skip

    assert code == 0
    text = (tmp_path / "card" / "README.md").read_text(encoding="utf-8")
    assert "Unreleased" not in text
    assert all(u.revision in text for u in lock.upstreams)
    assert header(text)["model-index"][0]["results"]
    assert "| 70.1 |" in section(text, "Scores") or "**70.1**" in section(text, "Scores")


def test_card_command_with_a_bad_lock_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = copy_recipe(tmp_path)
    (tmp_path / "lock.json").write_text("{}", encoding="utf-8")

    code = cli_main(["card", str(recipe.path), "--lock", str(tmp_path / "lock.json")])

    assert code == 1
    assert "cannot read the lock file" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The committed example card
# --------------------------------------------------------------------------------------------


EXAMPLE_NOTE = (
    "> **Example only.** Rendered by pearl-bot's test suite from stand-in data: the revisions,\n"
    "> licenses and scores below are illustrative, not those of the real model.\n"
)


def with_example_note(card: str) -> str:
    """The card with a note, right after its metadata header, that its data is made up."""
    end = card.index("\n---\n", 4) + len("\n---\n")
    return f"{card[:end]}\n{EXAMPLE_NOTE}{card[end:]}"


def test_example_card(pearl_release: tuple[Recipe, Lock, dict[str, Any]]) -> None:
    """examples/README.example.md: rendered from stand-in data; PEARL_BOT_WRITE_EXAMPLE=1
    rewrites it."""
    recipe, lock, cards = pearl_release
    previous = lock.model_copy(
        update={"upstreams": (lock.upstreams[0], lock.upstreams[1].model_copy(
            update={"revision": "5f4a0c9e1b7d3a2f6e8c0b1d9a7e5c3b1f0e2d4a"}), *lock.upstreams[2:])}
    )  # fmt: skip
    text = render_pearl(recipe, lock, cards, previous=previous)
    example = EXAMPLES / "README.example.md"
    if os.environ.get("PEARL_BOT_WRITE_EXAMPLE"):
        example.write_text(with_example_note(text), encoding="utf-8")

    committed = example.read_text(encoding="utf-8")
    assert EXAMPLE_NOTE in committed, "readers are told the example's numbers are made up"
    meta = header(committed)
    assert meta["base_model"] == header(text)["base_model"]
    assert [m.group(0) for m in re.finditer(r"^## .*$", committed, re.M)] == [
        m.group(0) for m in re.finditer(r"^## .*$", text, re.M)
    ]


def test_card_command_prints_the_card_without_out_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = copy_recipe(tmp_path)
    (tmp_path / "README.md").write_text("the user's own README\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert cli_main(["card", str(recipe.path)]) == 0

    printed = capsys.readouterr().out
    assert printed.startswith("---\n") and "**Unreleased.**" in printed
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "the user's own README\n"
