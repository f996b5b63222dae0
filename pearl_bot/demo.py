"""`pearl-bot demo`: the nightly story end to end, offline, on this machine.

The demo starts the local Hub on 127.0.0.1, publishes tiny Mistral-shaped stand-ins for the
five upstreams of Pearl-7B-0210-ties under their real repo ids (real commits, real tokenizer
files, cards with licenses and scores), and then runs the real CLI, `pearl-bot run`, three
times in child processes that talk to that Hub over HTTP exactly as they would to
huggingface.co:

1. first run: everything is new, so the merge runs and the first release is committed;
2. one upstream gets a new commit; the next run notices, re-merges and opens a Hub PR;
3. a last run finds nothing new and stops in seconds.

Children are used because huggingface_hub reads `HF_ENDPOINT` once, at import time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pearl_bot.testing.models import TinyConfig, fine_tune, random_weights, write_model

logger = logging.getLogger(__name__)

DEMO_TOKEN = "hf_demo_pearl_bot"
DEMO_USER = "pearl-bot"
EXAMPLE = "pearl-7b-0210-ties.yml"

#: Licenses and scores the stand-in upstreams declare in their cards.
_UPSTREAM_CARDS: dict[str, dict[str, Any]] = {
    "OpenPipe/mistral-ft-optimized-1227": {"license": "apache-2.0", "arc": 0.661},
    "louisbrulenaudet/Pearl-7B-slerp": {
        "license": "apache-2.0",
        "arc": 0.684,
        "base_model": ["mlabonne/OmniBeagle-7B", "WizardLM/WizardMath-7B-V1.1"],
    },
    "WizardLM/WizardMath-7B-V1.1": {"license": "apache-2.0", "arc": 0.618},
    "cognitivecomputations/WestLake-7B-v2-laser": {"license": "apache-2.0", "arc": 0.735},
    "CultriX/NeuralTrix-7B-dpo": {"license": "apache-2.0", "arc": 0.721},
}
MOVED = "WizardLM/WizardMath-7B-V1.1"


TARGET = "louisbrulenaudet/Pearl-7B-0210-ties"
MOVED = "WizardLM/WizardMath-7B-V1.1"


@dataclass
class DemoOutcome:
    """The three run reports of the story (as `pearl-bot run --json` printed them)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed in self.checks)


def run_demo(workdir: Path | None = None) -> int:
    """Run the demo on a fresh local Hub; return 0 when every step behaved as the story says."""
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="pearl-bot-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from pearl_bot.testing.hub_server import LocalHub

    hub = LocalHub(root=workdir / "hub")
    hub.start()
    try:
        outcome = play_demo(hub, workdir)
    finally:
        hub.stop()
    return 0 if outcome.ok else 1


def play_demo(hub: Any, workdir: Path) -> DemoOutcome:
    """Play the story against a started local Hub, printing what happens at each step."""
    hub.add_user(DEMO_TOKEN, DEMO_USER)
    recipe = _prepare_recipe(workdir)
    outcome = DemoOutcome()
    _say(f"local Hub listening on {hub.url} (files under {workdir / 'hub'})")

    _say("publishing five tiny stand-in upstreams under their real repo ids")
    family = _publish_upstreams(hub, workdir / "upstreams")

    _say("run 1: nothing was released yet, so pearl-bot merges and publishes the first release")
    outcome.runs.append(_run_cli(hub, workdir, recipe, "run-1"))

    _say(f"{MOVED} gets a new commit upstream (a retrained fine-tune)")
    _move_upstream(hub, workdir / "upstreams", family)

    _say("run 2: the move is detected, the merge reruns, and a Hub pull request opens")
    outcome.runs.append(_run_cli(hub, workdir, recipe, "run-2"))

    _say("run 3: nothing moved since, so the run stops early without downloading weights")
    outcome.runs.append(_run_cli(hub, workdir, recipe, "run-3"))

    outcome.checks = _check_story(hub, outcome.runs)
    _where_to_look(workdir)
    return outcome


def _prepare_recipe(workdir: Path) -> Path:
    source = _examples_dir() / EXAMPLE
    recipe = workdir / EXAMPLE
    shutil.copyfile(source, recipe)
    return recipe


def _examples_dir() -> Path:
    for candidate in (
        Path(__file__).resolve().parent / "examples",
        Path(__file__).resolve().parent.parent / "examples",
    ):
        if (candidate / EXAMPLE).is_file():
            return candidate
    raise FileNotFoundError(f"the bundled example {EXAMPLE} is missing from this installation")


def _publish_upstreams(hub: Any, root: Path) -> dict[str, Any]:
    config = TinyConfig()
    base = random_weights(config, seed=7)
    weights = {}
    for k, repo_id in enumerate(_UPSTREAM_CARDS):
        tensors = base if k == 0 else fine_tune(base, seed=100 + k, noise=0.01)
        weights[repo_id] = tensors
        folder = write_model(root / repo_id, tensors, config)
        (folder / "README.md").write_text(_upstream_card(repo_id), encoding="utf-8")
        sha = hub.commit_folder(repo_id, folder, message="Upload model")
        _say(f"  {repo_id} @ {sha[:10]}")
    return {"config": config, "weights": weights}


def _move_upstream(hub: Any, root: Path, family: dict[str, Any]) -> None:
    tensors = fine_tune(family["weights"][MOVED], seed=999, noise=0.005)
    folder = write_model(root / "moved" / MOVED, tensors, family["config"])
    (folder / "README.md").write_text(_upstream_card(MOVED), encoding="utf-8")
    sha = hub.commit_folder(MOVED, folder, message="Retrain on more math data")
    _say(f"  {MOVED} now @ {sha[:10]}")


def _upstream_card(repo_id: str) -> str:
    info = _UPSTREAM_CARDS[repo_id]
    base = "".join(f"  - {b}\n" for b in info.get("base_model", []))
    base_block = f"base_model:\n{base}" if base else ""
    return (
        "---\n"
        f"license: {info['license']}\n"
        f"{base_block}"
        "model-index:\n"
        f"  - name: {repo_id.split('/')[1]}\n"
        "    results:\n"
        "      - task: {type: text-generation}\n"
        "        dataset: {type: ai2_arc, name: AI2 Reasoning Challenge (25-Shot),"
        " config: ARC-Challenge, split: test, args: {num_few_shot: 25}}\n"
        f"        metrics: [{{type: acc_norm, value: {info['arc']}}}]\n"
        "        source: {name: Open LLM Leaderboard, url: https://huggingface.co/spaces/open-llm-leaderboard}\n"
        "---\n\n"
        f"# {repo_id}\n\nA tiny stand-in published by the pearl-bot demo.\n"
    )


def _run_cli(hub: Any, workdir: Path, recipe: Path, name: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": DEMO_TOKEN,
        "HF_HOME": str(workdir / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for variable in ("GITHUB_ACTIONS", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_OFFLINE"):
        env.pop(variable, None)
    out = workdir / name
    command = [sys.executable, "-m", "pearl_bot", "run", str(recipe), "--out", str(out), "--json"]
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        _say(f"  `pearl-bot run` failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return {"ok": False, "status": "failed"}
    report: dict[str, Any] = json.loads(proc.stdout)
    _say(f"  status: {report['status']} in {seconds:.1f}s")
    for move in report["upstreams"]:
        if move["locked"] != move["current"]:
            old = (move["locked"] or "none")[:10]
            _say(f"    {move['key']}: {old} -> {move['current'][:10]}")
    for label in ("commit_url", "pr_url"):
        if report.get(label):
            _say(f"    {label.replace('_', ' ')}: {report[label]}")
    return report


def _check_story(hub: Any, runs: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    statuses = [run.get("status") for run in runs]
    checks = [
        ("run 1 released", statuses[0] == "released"),
        ("run 2 opened a pull request", statuses[1] == "pr-opened"),
        ("run 3 found nothing to do", statuses[2] == "up-to-date"),
        ("the target has exactly one open pull request", _open_prs(hub, TARGET) == 1),
    ]
    for label, passed in checks:
        _say(f"  [{'ok' if passed else 'FAILED'}] {label}")
    return checks


def _open_prs(hub: Any, target: str) -> int:
    return sum(1 for pr in hub.pull_requests(target) if pr["status"] == "open")


def _where_to_look(workdir: Path) -> None:
    _say("where to look:")
    _say(f"  the first release (main):    {workdir / 'run-1'}")
    _say(f"  the pull request's revision: {workdir / 'run-2'}")
    _say(f"  its model card:              {workdir / 'run-2' / 'README.md'}")
    _say(f"  the lock it publishes:       {workdir / 'run-2' / 'pearl.lock.json'}")
    _say(f"  the local Hub's storage:     {workdir / 'hub'}")
    _say("the commit and PR links above served from the local Hub, which stops with the demo;")
    _say("pass --workdir DIR to keep the files somewhere of your choosing")


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)
