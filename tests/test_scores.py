"""Scores: lm-eval result files, parents' card metadata, the evaluation command, the table."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pearl_bot.errors import CardError
from pearl_bot.recipe import parse_recipe
from pearl_bot.scores import (
    Score,
    Scores,
    card_scores,
    collect_scores,
    main_metric,
    read_lm_eval,
)
from pearl_bot.testing.models import TinyConfig, build_family
from pearl_bot.upstream_cards import parse_upstream_card

DATA = Path(__file__).parent / "data" / "scores"
RESULTS = DATA / "lm_eval_results.json"
MERGED = "org/merged"

TIES = """\
models:
  - model: org/base
  - model: org/a
    parameters: {weight: 0.5, density: 0.5}
merge_method: ties
base_model: org/base
publish:
  repo_id: org/merged
"""

LEADERBOARD_CARD = """\
---
license: apache-2.0
model-index:
- name: org/a
  results:
  - task: {type: text-generation, name: Text Generation}
    dataset: {name: AI2 Reasoning Challenge (25-Shot), type: ai2_arc, config: ARC-Challenge,
              split: test, args: {num_few_shot: 25}}
    metrics:
    - {type: acc_norm, value: 66.5, name: normalized accuracy}
  - task: {type: text-generation}
    dataset: {name: GSM8k (5-shot), type: gsm8k, config: main, split: test,
              args: {num_few_shot: 5}}
    metrics:
    - {type: acc, value: "0.7012", name: accuracy}
  - task: {type: text-generation}
    dataset: {name: Winogrande (5-shot), type: winogrande, config: winogrande_xl}
    metrics:
    - {type: acc, value: .nan}
---
"""


def _recipe(tmp_path: Path, scores: str = "", text: str = TIES) -> object:
    path = tmp_path / "recipe" / "merge.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + scores, encoding="utf-8")
    return parse_recipe(path.read_text(), path=path)


def _by_benchmark(scores: list[Score]) -> dict[str, Score]:
    return {s.benchmark: s for s in scores}


def test_read_lm_eval_takes_each_tasks_main_metric_with_stderr() -> None:
    scores = _by_benchmark(read_lm_eval(RESULTS, model=MERGED))

    arc = scores["arc_challenge"]
    assert (arc.metric, arc.value, arc.stderr, arc.n_shot) == ("acc_norm", 68.26, 1.36, 25)
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split) == (
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
    )
    gsm8k = scores["gsm8k"]
    assert (gsm8k.metric, gsm8k.value, gsm8k.stderr) == ("exact_match", 64.14, 1.32)
    assert scores["truthfulqa_mc2"].dataset_split == "validation"
    assert all(isinstance(s.value, float) for s in scores.values())


def test_read_lm_eval_keeps_group_rows_and_drops_their_subtasks_and_nan() -> None:
    scores = _by_benchmark(read_lm_eval(RESULTS, model=MERGED))

    assert scores["mmlu"].value == 64.12
    assert not any(name.startswith("mmlu_") for name in scores)
    assert "broken_task" not in scores


def test_perplexity_is_lower_is_better_without_stderr() -> None:
    wikitext = _by_benchmark(read_lm_eval(RESULTS, model=MERGED))["wikitext"]

    assert (wikitext.metric, wikitext.value) == ("word_perplexity", 9.123)
    assert wikitext.stderr is None
    assert wikitext.higher_is_better is False


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"acc": 0.5, "acc_norm": 0.6}, ("acc_norm", 0.6, None)),
        ({"acc,none": 0.5, "acc_stderr,none": 0.01}, ("acc", 0.5, 0.01)),
        ({"f1,none": 0.7, "alias": "x", "f1_stderr,none": "N/A"}, ("f1", 0.7, None)),
        (
            {"exact_match,flexible": 0.4, "exact_match,strict-match": 0.3},
            ("exact_match", 0.3, None),
        ),
        ({"custom,none": 3.0}, ("custom", 3.0, None)),
        ({"acc,none": math.nan, "bleu,none": 12.0}, ("bleu", 12.0, None)),
        ({"acc,none": True, "alias": "x"}, None),
    ],
)
def test_main_metric_choice(metrics: dict[str, object], expected: object) -> None:
    assert main_metric(metrics) == expected


def test_lm_eval_globs_are_relative_to_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "recipe" / "evals" / "run1"
    results.mkdir(parents=True)
    shutil.copy(RESULTS, results / "results_2026.json")
    recipe = _recipe(tmp_path, "scores:\n  lm_eval: evals/**/results_*.json\n")
    monkeypatch.chdir(tmp_path)

    scores = collect_scores(recipe, model_dir=None, upstream_cards=None, work_dir=tmp_path)

    assert scores.merged == MERGED
    assert {s.model for s in scores.items} == {MERGED}
    assert scores.table()["arc_challenge (acc_norm)"] == {MERGED: 68.26}


def test_lm_eval_pattern_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "scores:\n  lm_eval: [evals/missing_*.json]\n")

    with pytest.raises(CardError, match=r"scores.lm_eval entry 'evals/missing_\*.json' matches no"):
        collect_scores(recipe, model_dir=None, upstream_cards=None, work_dir=tmp_path)


@pytest.mark.parametrize("content", ["{not json", '{"acc": 0.5}', "[1, 2]"])
def test_a_file_that_is_not_lm_eval_output_is_named_in_the_error(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "results.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(CardError) as err:
        read_lm_eval(path, model=MERGED)
    assert str(path) in str(err.value)


def test_parents_scores_come_from_their_cards_model_index(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "scores:\n  parents: true\n")
    card = parse_upstream_card(LEADERBOARD_CARD, key="org/a", repo_id="org/a", revision="a" * 40)

    scores = collect_scores(
        recipe, model_dir=None, upstream_cards={"org/a": card}, work_dir=tmp_path
    )

    by_key = {s.key: s for s in scores.of("org/a")}
    # The Leaderboard's dataset names map onto lm-eval task names; fractions become percent.
    assert by_key[("arc_challenge", "acc_norm")].value == 66.5
    assert by_key[("arc_challenge", "acc_norm")].n_shot == 25
    # gsm8k's "acc" on the Leaderboard is lm-eval's exact_match.
    assert by_key[("gsm8k", "exact_match")].value == 70.12
    assert ("winogrande", "acc") not in by_key  # NaN is never published
    source = by_key[("arc_challenge", "acc_norm")]
    assert source.source_url == f"https://huggingface.co/org/a/blob/{'a' * 40}/README.md"


def test_parents_scores_are_ignored_unless_asked_for(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    card = parse_upstream_card(LEADERBOARD_CARD, key="org/a", repo_id="org/a", revision="a" * 40)

    scores = collect_scores(
        recipe, model_dir=None, upstream_cards={"org/a": card}, work_dir=tmp_path
    )

    assert scores.items == ()


@pytest.mark.parametrize(
    ("dataset", "task"),
    [
        # The Leaderboard's shape without its config: the name says Challenge.
        ("{name: AI2 Reasoning Challenge (25-Shot), type: ai2_arc}", "arc_challenge"),
        ("{name: ARC-Easy, type: allenai/ai2_arc}", "arc_easy"),
        ("{name: ARC, type: ai2_arc, config: ARC-Easy}", "arc_easy"),
        ("{name: ARC, type: ai2_arc, config: ARC-Challenge}", "arc_challenge"),
    ],
)
def test_an_ai2_arc_result_is_arc_challenge_unless_it_says_easy(dataset: str, task: str) -> None:
    text = (
        "---\nmodel-index:\n- name: org/a\n  results:\n  - task: {type: text-generation}\n"
        f"    dataset: {dataset}\n    metrics:\n    - {{type: acc_norm, value: 60.5}}\n---\n"
    )
    card = parse_upstream_card(text, key="org/a", repo_id="org/a", revision="a" * 40)

    assert [s.benchmark for s in card_scores(card)] == [task]


def test_numpy_values_become_plain_floats() -> None:
    card = parse_upstream_card(LEADERBOARD_CARD, key="org/a", repo_id="org/a", revision="a" * 40)
    result = card.eval_results[0]
    result.metric_value = np.float32(0.61)

    value = card_scores(card)[0].value
    assert type(value) is float and value == 61.0


def test_rows_mark_the_best_and_the_delta_against_the_best_parent() -> None:
    scores = Scores(
        merged=MERGED,
        items=(
            Score(MERGED, "arc_challenge", "acc_norm", 68.26, "lm-eval"),
            Score("org/a", "arc_challenge", "acc_norm", 66.5, "card"),
            Score("org/b", "arc_challenge", "acc_norm", 67.0, "card"),
            Score(MERGED, "wikitext", "word_perplexity", 9.5, "lm-eval", higher_is_better=False),
            Score("org/a", "wikitext", "word_perplexity", 9.0, "card", higher_is_better=False),
        ),
    )

    arc, wikitext = scores.rows()

    assert scores.models() == [MERGED, "org/a", "org/b"]
    assert (arc.best, arc.delta) == (frozenset({MERGED}), 1.26)
    assert (wikitext.best, wikitext.delta) == (frozenset({"org/a"}), 0.5)
    assert wikitext.cells["org/b"] is None
    assert scores.table() == {
        "arc_challenge (acc_norm)": {MERGED: 68.26, "org/a": 66.5, "org/b": 67.0},
        "wikitext (word_perplexity)": {MERGED: 9.5, "org/a": 9.0},
    }


def test_scores_command_evaluates_the_merged_model(tmp_path: Path) -> None:
    model_dir = build_family(tmp_path / "models", ["merged"], TinyConfig())["merged"]
    script = tmp_path / "recipe" / "eval" / "perplexity.py"
    script.parent.mkdir(parents=True)
    shutil.copy(DATA / "perplexity.py", script)
    shutil.copy(DATA / "eval_text.txt", script.parent / "eval_text.txt")
    command = f"{sys.executable} eval/perplexity.py {{model_dir}} {{results_dir}}"
    recipe = _recipe(tmp_path, f"scores:\n  command: {json.dumps(command)}\n")

    scores = collect_scores(
        recipe, model_dir=model_dir, upstream_cards=None, work_dir=tmp_path / "w"
    )

    (score,) = scores.items
    written = json.loads(next((tmp_path / "w" / "eval-results").rglob("*.json")).read_text())
    measured = written["results"]["tiny_text"]["word_perplexity,none"]
    assert (score.model, score.benchmark, score.metric) == (MERGED, "tiny_text", "word_perplexity")
    assert score.value == float(f"{measured:.4g}")
    # Small random weights give nearly uniform next-token odds: perplexity near the vocab size.
    assert 0.6 * TinyConfig().vocab_size < score.value < 1.4 * TinyConfig().vocab_size
    assert score.higher_is_better is False
    assert score.source.startswith("scores.command: ") and "eval/perplexity.py" in score.source


def test_scores_command_is_skipped_without_a_merged_model(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "scores:\n  command: does-not-exist {model_dir}\n")

    scores = collect_scores(recipe, model_dir=None, upstream_cards=None, work_dir=tmp_path)

    assert scores.items == ()


def test_failing_scores_command_reports_status_and_stderr(tmp_path: Path) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(\"no GPU here\")'"
    recipe = _recipe(tmp_path, f"scores:\n  command: {json.dumps(command)}\n")

    with pytest.raises(CardError, match="exited with status 1: no GPU here"):
        collect_scores(recipe, model_dir=tmp_path, upstream_cards=None, work_dir=tmp_path / "w")


def test_scores_command_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, f"scores:\n  command: {sys.executable} -c pass\n")

    with pytest.raises(CardError, match="wrote no JSON result file"):
        collect_scores(recipe, model_dir=tmp_path, upstream_cards=None, work_dir=tmp_path / "w")
