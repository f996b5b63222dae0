"""The offline demo, played against the test session's local Hub, and its final state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pearl_bot.demo import MOVED, TARGET, play_demo
from pearl_bot.lock import LOCK_FILENAME, Lock
from pearl_bot.testing.hub_server import LocalHub


def test_demo_tells_the_whole_nightly_story(
    local_hub: LocalHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = play_demo(local_hub, tmp_path)

    assert [run["status"] for run in outcome.runs] == ["released", "pr-opened", "up-to-date"]
    assert outcome.ok, outcome.checks

    # Two releases: the first on main, the second as the bot's one open pull request.
    prs = [pr for pr in local_hub.pull_requests(TARGET) if pr["status"] == "open"]
    assert len(prs) == 1
    main_lock = Lock.from_json(local_hub.read_file(TARGET, LOCK_FILENAME).decode())
    pr_lock = Lock.from_json(local_hub.read_file(TARGET, LOCK_FILENAME, prs[0]["ref"]).decode())
    assert main_lock.merge_method == pr_lock.merge_method == "ties"

    # Only the upstream that moved has another revision in the PR's lock.
    moved = {u.key for u in pr_lock.upstreams if u.revision != main_lock.upstream(u.key).revision}
    assert moved == {MOVED}
    assert pr_lock.upstream(MOVED).revision == local_hub.head(MOVED)
    assert main_lock.upstream(MOVED).revision != local_hub.head(MOVED)

    # The released files are the ones the lock hashes, and the card names the move.
    pr_files = local_hub.files(TARGET, prs[0]["ref"])
    assert set(pr_lock.outputs) <= set(pr_files)
    card = pr_files["README.md"].decode()
    assert f"{MOVED} moved from" in card

    # Run 3 downloaded no weights: it stopped after the check step.
    assert [step["name"] for step in outcome.runs[2]["steps"]] == ["check"]

    out = capsys.readouterr().out
    assert "[demo]   [ok] the target has exactly one open pull request" in out
    assert "FAILED" not in out
    assert json.loads((tmp_path / "run-2" / LOCK_FILENAME).read_text())["outputs"]
