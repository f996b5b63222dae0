"""Benchmark scores for the model card and the run report.

Three sources, all declared in the recipe's `scores:` section:

- `lm_eval`: result files of lm-evaluation-harness 0.4 (`results` / `n-shot` / `versions` /
  `configs`), paths or globs relative to the recipe file; each task's main metric is kept with
  its stderr;
- `parents: true`: each upstream's published scores, read from the `model-index` of its card
  (see `pearl_bot.upstream_cards.fetch_upstream_cards`);
- `command`: an evaluation command run after the merge, with `{model_dir}` and `{results_dir}`
  substituted, whose lm-eval-format JSON output is ingested.

Bounded metrics (accuracies, exact match) are kept in percent, as the Open LLM Leaderboard
publishes them, so a merge's lm-eval fraction and a parent card's percentage compare directly.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pearl_bot.errors import CardError

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from pearl_bot.recipe import Recipe
    from pearl_bot.upstream_cards import UpstreamCard

logger = logging.getLogger(__name__)

#: The display name of the merged model when the recipe publishes nowhere.
MERGED_NAME = "merged model"

# The metric that stands for a task, in order of preference (the Open LLM Leaderboard's picks).
MAIN_METRICS = (
    "acc_norm",
    "acc",
    "mc2",
    "exact_match",
    "f1",
    "em",
    "word_perplexity",
    "perplexity",
    "bits_per_byte",
)
# Metrics in [0, 1] that lm-eval reports as fractions; cards show them in percent.
BOUNDED_METRICS = frozenset({"acc", "acc_norm", "mc1", "mc2", "exact_match", "f1", "em"})
LOWER_IS_BETTER = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "loss", "ter"}
)
# Filters of lm-eval 0.4 metric keys (`acc,none`, `exact_match,strict-match`), preferred first.
_FILTERS = ("none", "strict-match")
# Cards in the Open LLM Leaderboard's shape name datasets, not lm-eval tasks.
_CARD_DATASET_TASKS = {
    "ai2_arc": "arc_challenge",
    "hellaswag": "hellaswag",
    "mmlu": "mmlu",
    "truthful_qa": "truthfulqa_mc2",
    "winogrande": "winogrande",
    "gsm8k": "gsm8k",
}
# ...and name some metrics differently from lm-eval's main metric of the same task.
_CARD_METRICS = {("gsm8k", "acc"): "exact_match", ("truthfulqa_mc2", "mc2"): "acc"}
SCORE_COMMAND_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Score:
    """One benchmark number of one model, with where it came from."""

    model: str
    benchmark: str
    metric: str
    value: float
    source: str
    stderr: float | None = None
    n_shot: int | None = None
    higher_is_better: bool = True
    dataset_type: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    source_url: str | None = None

    @property
    def label(self) -> str:
        """`benchmark (metric)`: the row name in tables."""
        return f"{self.benchmark} ({self.metric})"

    @property
    def key(self) -> tuple[str, str]:
        return (self.benchmark, self.metric)


@dataclass(frozen=True)
class ScoreRow:
    """One benchmark across models: each model's score, the best ones, the merge's delta."""

    benchmark: str
    metric: str
    cells: dict[str, Score | None]
    best: frozenset[str]
    #: The merge minus its best parent (positive is better for higher-is-better metrics).
    delta: float | None


@dataclass(frozen=True)
class Scores:
    """Every score of a release: the merged model's and its parents'."""

    merged: str = MERGED_NAME
    items: tuple[Score, ...] = ()

    def models(self) -> list[str]:
        """Model names, the merged model first, then parents in order of appearance."""
        names = [self.merged] if any(s.model == self.merged for s in self.items) else []
        return names + list(dict.fromkeys(s.model for s in self.items if s.model != self.merged))

    def of(self, model: str) -> list[Score]:
        return [s for s in self.items if s.model == model]

    def benchmarks(self) -> list[tuple[str, str]]:
        """(benchmark, metric) pairs, the merged model's first."""
        ordered = sorted(self.items, key=lambda s: s.model != self.merged)
        return list(dict.fromkeys(s.key for s in ordered))

    def get(self, model: str, benchmark: str, metric: str) -> Score | None:
        return next(
            (s for s in self.items if s.model == model and s.key == (benchmark, metric)), None
        )

    def rows(self) -> list[ScoreRow]:
        """The comparison table, one row per (benchmark, metric)."""
        return [self._row(benchmark, metric) for benchmark, metric in self.benchmarks()]

    def table(self) -> dict[str, dict[str, float]]:
        """{benchmark label: {model name: value}}, as the run report shows it."""
        table: dict[str, dict[str, float]] = {}
        for score in self.items:
            table.setdefault(score.label, {})[score.model] = score.value
        return table

    def _row(self, benchmark: str, metric: str) -> ScoreRow:
        cells = {m: self.get(m, benchmark, metric) for m in self.models()}
        present = [s for s in cells.values() if s is not None]
        higher = present[0].higher_is_better
        pick = max if higher else min
        best_value = pick(s.value for s in present)
        best = frozenset(s.model for s in present if s.value == best_value)
        merged = cells.get(self.merged)
        parents = [s for s in present if s.model != self.merged]
        delta = None
        if merged is not None and parents:
            delta = _round(merged.value - pick(s.value for s in parents), metric)
        return ScoreRow(benchmark, metric, cells, best, delta)


def collect_scores(
    recipe: Recipe,
    *,
    model_dir: Path | None,
    upstream_cards: Mapping[str, UpstreamCard] | None,
    work_dir: Path,
    extra_files: Iterable[str] = (),
) -> Scores:
    """Gather every score the recipe asks for.

    `upstream_cards` maps lock keys to what each upstream's card says; `model_dir` is the merged
    model folder (the evaluation command is skipped without it); `extra_files` are more lm-eval
    result paths or globs, relative to the working directory (the CLI's `--scores`).
    """
    merged = recipe.publish.repo_id if recipe.publish is not None else MERGED_NAME
    items: list[Score] = []
    for pattern in recipe.scores.lm_eval:
        for path in expand_pattern(pattern, recipe.base_dir, field="scores.lm_eval"):
            items += read_lm_eval(path, model=merged)
    for pattern in extra_files:
        for path in expand_pattern(pattern, Path.cwd(), field="--scores"):
            items += read_lm_eval(path, model=merged)
    if recipe.scores.command is not None:
        items += _command_scores(recipe, model_dir, work_dir, merged)
    if recipe.scores.parents:
        for card in (upstream_cards or {}).values():
            items += card_scores(card)
    return Scores(merged=merged, items=_dedupe(items))


def _dedupe(items: list[Score]) -> tuple[Score, ...]:
    """Keep the last score per (model, benchmark, metric): later files override earlier."""
    kept: dict[tuple[str, str, str], Score] = {}
    for score in items:
        kept.pop((score.model, *score.key), None)
        kept[(score.model, *score.key)] = score
    return tuple(kept.values())


def expand_pattern(pattern: str, base_dir: Path, *, field: str) -> list[Path]:
    """The files `pattern` (a path or a glob, relative to `base_dir`) names, sorted."""
    full = Path(pattern).expanduser()
    if not full.is_absolute():
        full = base_dir / full
    matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
    if not matches:
        raise CardError(
            f"{field} entry {pattern!r} matches no file (looked for {full})",
            path=full,
            hint="check the path; it is relative to the recipe file",
        )
    return matches


# --------------------------------------------------------------------------------------------
# lm-evaluation-harness results
# --------------------------------------------------------------------------------------------


def read_lm_eval(path: Path, *, model: str) -> list[Score]:
    """The main metric of every top-level task in one lm-eval 0.4 results file."""
    data = _load_results(path)
    results: dict[str, Any] = data["results"]
    groups = _mapping(data.get("group_subtasks"))
    # A subtask of a group that has its own aggregate row (mmlu's 57 subjects) is left out.
    children = {
        c for g, subs in groups.items() if g in results and isinstance(subs, list) for c in subs
    }
    scores = []
    for task, metrics in results.items():
        if task in children:
            continue
        score = _task_score(task, _mapping(metrics), data, model, path)
        if score is not None:
            scores.append(score)
    logger.info("read %d scores from %s", len(scores), path)
    return scores


def _load_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CardError(f"cannot read scores file {path} ({err})", path=path) from err
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CardError(
            f"{path} is not an lm-evaluation-harness results file: it has no `results` mapping",
            path=path,
            hint="pass the results_*.json file that `lm_eval --output_path` writes",
        )
    return data


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _task_score(
    task: str, metrics: dict[str, Any], data: dict[str, Any], model: str, path: Path
) -> Score | None:
    picked = main_metric(metrics)
    if picked is None:
        logger.warning("%s: task %r has no finite numeric metric; skipped", path, task)
        return None
    metric, value, stderr = picked
    config = _mapping(_mapping(data.get("configs")).get(task))
    higher = _mapping(_mapping(data.get("higher_is_better")).get(task)).get(metric)
    n_shot = _mapping(data.get("n-shot")).get(task, config.get("num_fewshot"))
    return Score(
        model=model,
        benchmark=task,
        metric=metric,
        value=_scaled(value, metric),
        stderr=None if stderr is None else _scaled(stderr, metric),
        n_shot=n_shot if isinstance(n_shot, int) and not isinstance(n_shot, bool) else None,
        higher_is_better=higher if isinstance(higher, bool) else metric not in LOWER_IS_BETTER,
        dataset_type=_str_or_none(config.get("dataset_path")),
        dataset_config=_str_or_none(config.get("dataset_name")),
        dataset_split=_str_or_none(config.get("test_split") or config.get("validation_split")),
        source=f"lm-eval: {path.name}",
    )


def main_metric(metrics: Mapping[str, Any]) -> tuple[str, float, float | None] | None:
    """(metric, value, stderr) of a task's result row, or None if it has no usable number.

    lm-eval 0.4 keys are `metric,filter`; the unfiltered (`none`) or strict value wins.
    """
    found: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name, _, filter_ = key.partition(",")
        if name.endswith("_stderr") or not _is_finite_number(value):
            continue
        found.setdefault(name, {})[filter_ or "none"] = float(value)
    if not found:
        return None
    name = next((m for m in MAIN_METRICS if m in found), next(iter(found)))
    filter_ = next((f for f in _FILTERS if f in found[name]), next(iter(found[name])))
    stderr = metrics.get(f"{name}_stderr,{filter_}", metrics.get(f"{name}_stderr"))
    return name, found[name][filter_], float(stderr) if _is_finite_number(stderr) else None


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _scaled(value: float, metric: str) -> float:
    """Bounded metrics in percent (a fraction is scaled up), rounded for display and YAML."""
    if metric in BOUNDED_METRICS and abs(value) <= 1.0:
        value *= 100.0
    return _round(value, metric)


def _round(value: float, metric: str) -> float:
    # float() drops numpy/torch scalar types, which YAML would dump as python objects.
    if metric in BOUNDED_METRICS:
        return round(float(value), 2)
    return float(f"{float(value):.4g}")


# --------------------------------------------------------------------------------------------
# Parents' cards
# --------------------------------------------------------------------------------------------


def card_scores(card: UpstreamCard) -> list[Score]:
    """The scores an upstream publishes in its card's `model-index`."""
    scores = []
    for result in card.eval_results:
        score = _card_score(card, result)
        if score is not None:
            scores.append(score)
    return scores


def _card_score(card: UpstreamCard, result: EvalResult) -> Score | None:
    value = _as_float(result.metric_value)
    metric = str(result.metric_type)
    if value is None:
        logger.warning(
            "card of %s: metric %r has no finite value (%r); skipped",
            card.repo_id,
            metric,
            result.metric_value,
        )
        return None
    args = result.dataset_args if isinstance(result.dataset_args, dict) else {}
    n_shot = args.get("num_few_shot")
    benchmark = card_benchmark(result)
    metric = _CARD_METRICS.get((benchmark, metric), metric)
    return Score(
        model=card.repo_id,
        benchmark=benchmark,
        metric=metric,
        value=_scaled(value, metric),
        n_shot=n_shot if isinstance(n_shot, int) and not isinstance(n_shot, bool) else None,
        higher_is_better=metric not in LOWER_IS_BETTER,
        dataset_type=str(result.dataset_type),
        dataset_config=_str_or_none(result.dataset_config),
        dataset_split=_str_or_none(result.dataset_split),
        source=f"model-index of {card.repo_id}@{card.revision[:7]}",
        source_url=card.url,
    )


def card_benchmark(result: EvalResult) -> str:
    """The lm-eval task a card's result is about (the Leaderboard names datasets instead)."""
    dataset = str(result.dataset_type).rsplit("/", 1)[-1].lower()
    if dataset == "ai2_arc" and _is_arc_easy(result):
        return "arc_easy"
    return _CARD_DATASET_TASKS.get(dataset, str(result.dataset_name))


def _is_arc_easy(result: EvalResult) -> bool:
    """Whether an `ai2_arc` result is about ARC-Easy: its config says so, else its name does.

    The Leaderboard writes `config: ARC-Challenge` under the name "AI2 Reasoning Challenge
    (25-Shot)" and never reported ARC-Easy, so a result that does not say "easy" is Challenge.
    """
    config = str(result.dataset_config or "").strip().lower()
    if config in ("arc-easy", "arc-challenge"):
        return config == "arc-easy"
    return "easy" in str(result.dataset_name or "").lower()


def _as_float(value: Any) -> float | None:
    """A finite float from a card's metric value (a number or a numeric string), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------
# The evaluation command
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandRun:
    """One run of `scores.command`: the argv, and the result files it wrote."""

    argv: list[str]
    results: list[Path] = field(default_factory=list)


def _command_scores(
    recipe: Recipe, model_dir: Path | None, work_dir: Path, merged: str
) -> list[Score]:
    assert recipe.scores.command is not None
    if model_dir is None:
        logger.info("scores.command skipped: no merged model to evaluate")
        return []
    run = run_score_command(recipe.scores.command, model_dir, work_dir / "eval-results", recipe)
    scores: list[Score] = []
    for path in run.results:
        scores += read_lm_eval(path, model=merged)
    return [_with_source(s, f"scores.command: {recipe.scores.command}") for s in scores]


def _with_source(score: Score, source: str) -> Score:
    return replace(score, source=source)


def run_score_command(
    command: str, model_dir: Path, results_dir: Path, recipe: Recipe
) -> CommandRun:
    """Run the evaluation command in the recipe's folder; return the JSON files it wrote.

    The command is split like a shell would split it but runs without a shell; `{model_dir}`
    and `{results_dir}` are replaced inside each argument, so paths with spaces stay whole.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    try:
        parts = shlex.split(command)
    except ValueError as err:
        raise _command_error(recipe, f"cannot be split into arguments ({err})") from None
    subs = {"{model_dir}": str(model_dir), "{results_dir}": str(results_dir)}
    argv = [_substitute(part, subs) for part in parts]
    logger.info("running scores.command: %s", shlex.join(argv))
    try:
        done = subprocess.run(
            argv,
            cwd=recipe.base_dir,
            capture_output=True,
            text=True,
            timeout=SCORE_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise _command_error(recipe, f"could not run {argv[0]!r} ({err})") from err
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise _command_error(recipe, f"exited with status {done.returncode}: {tail}")
    results = sorted(p for p in results_dir.rglob("*.json") if p.is_file())
    if not results:
        raise _command_error(recipe, f"wrote no JSON result file under {results_dir}")
    return CommandRun(argv=argv, results=results)


def _substitute(part: str, subs: dict[str, str]) -> str:
    for placeholder, value in subs.items():
        part = part.replace(placeholder, value)
    return part


def _command_error(recipe: Recipe, what: str) -> CardError:
    return CardError(
        f"scores.command {recipe.scores.command!r} {what}",
        path=recipe.path,
        hint="run it by hand on the merged model; it must write lm-eval JSON to {results_dir}",
    )
