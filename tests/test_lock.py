"""The lock: building it from an output folder and reading it back from the target repo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pearl_bot.errors import PublishError
from pearl_bot.lock import (
    LOCK_FILENAME,
    PR_MARKER,
    Lock,
    LockedUpstream,
    build_lock,
    check_upstreams,
    read_published_lock,
    write_lock,
)
from pearl_bot.recipe import Recipe, parse_recipe

TOKEN = "hf_test_bot"
REPO = "pearl-bot-tester/merged"


def recipe_for(tmp_path: Path, publish: bool = True) -> Recipe:
    text = "merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1.0}\n"
    if publish:
        text += f"publish:\n  repo_id: {REPO}\n"
    (tmp_path / "recipe.yml").write_text(text)
    return parse_recipe(text, path=tmp_path / "recipe.yml")


def lock_of(recipe: Recipe, revision: str, tmp_path: Path) -> Lock:
    out = tmp_path / f"out-{revision[:6]}"
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(revision)
    up = LockedUpstream(key="org/a", repo_id="org/a", tracked="main", revision=revision)
    return build_lock(recipe, [up], numerics="precise", out_dir=out)


def test_build_lock_hashes_every_output_but_itself(tmp_path: Path) -> None:
    recipe = recipe_for(tmp_path)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"w")
    (out / "sub" / "x.json").write_text("{}")
    (out / LOCK_FILENAME).write_text("stale")

    lock = build_lock(recipe, [], numerics="mergekit", out_dir=out)

    assert lock.outputs == {
        "model.safetensors": hashlib.sha256(b"w").hexdigest(),
        "sub/x.json": hashlib.sha256(b"{}").hexdigest(),
    }
    assert (lock.recipe_sha256, lock.numerics) == (recipe.sha256, "mergekit")
    written = write_lock(lock, out)
    assert Lock.read(written) == lock
    assert written.stat().st_mode & 0o777 == 0o644, "published like the other files"
    assert [p.name for p in out.iterdir() if p.name.startswith(".pearl")] == []


def test_missing_target_has_no_lock(local_hub, hub_api) -> None:
    state = read_published_lock(REPO, token=TOKEN)

    assert (state.exists, state.head, state.lock, state.pr_num) == (False, None, None, None)


def test_reads_main_and_the_bots_open_pr(local_hub, hub_api, tmp_path: Path) -> None:
    recipe = recipe_for(tmp_path)
    main_lock, pr_lock = lock_of(recipe, "1" * 40, tmp_path), lock_of(recipe, "2" * 40, tmp_path)
    head = local_hub.commit(REPO, {LOCK_FILENAME: main_lock.to_json()})
    local_hub.open_pull_request(REPO, "not ours", description=PR_MARKER, author="a-human")
    num = local_hub.open_pull_request(
        REPO, "pearl-bot: update", description=f"{PR_MARKER}\nmoved", author="pearl-bot-tester"
    )
    local_hub.commit(REPO, {LOCK_FILENAME: pr_lock.to_json()}, branch=f"refs/pr/{num}")
    local_hub.open_pull_request(REPO, "no marker", author="pearl-bot-tester")

    state = read_published_lock(REPO, token=TOKEN)

    assert (state.head, state.lock, state.pr_num, state.pr_lock) == (head, main_lock, num, pr_lock)
    assert state.latest_lock == pr_lock and state.lock_source == f"pr#{num}"
    assert state.pr_head == local_hub.head(REPO, f"refs/pr/{num}")


def test_unreadable_lock_counts_as_none(local_hub, hub_api, caplog) -> None:
    local_hub.commit(REPO, {LOCK_FILENAME: "{not json"})

    assert read_published_lock(REPO, token=TOKEN).lock is None
    assert "ignoring unreadable pearl.lock.json" in caplog.text


def test_failed_lock_read_is_an_error_not_a_missing_lock(local_hub, hub_api, tmp_path) -> None:
    local_hub.commit(
        REPO, {LOCK_FILENAME: lock_of(recipe_for(tmp_path), "1" * 40, tmp_path).to_json()}
    )
    local_hub.add_fault("HEAD", r"/resolve/.*pearl.lock.json", status=403, times=-1)

    with pytest.raises(PublishError, match=r"cannot read pearl.lock.json at [0-9a-f]{12}.*403"):
        read_published_lock(REPO, token=TOKEN)


def test_check_reports_moved_and_unchanged(local_hub, hub_api, tmp_path: Path) -> None:
    recipe = recipe_for(tmp_path)
    old = local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.commit(REPO, {LOCK_FILENAME: lock_of(recipe, old, tmp_path).to_json()})

    same = check_upstreams(recipe, token=TOKEN)
    new = local_hub.commit("org/a", {"config.json": '{"v": 2}'})
    moved = check_upstreams(recipe, token=TOKEN)

    assert not same.changed and "0 of 1 upstreams moved: up to date" in same.summary()
    assert moved.changed and [(u.locked, u.current) for u in moved.moved] == [(old, new)]
    assert moved.to_dict()["upstreams"][0]["moved"] is True


def test_check_without_publish_sees_everything_new(local_hub, hub_api, tmp_path: Path) -> None:
    local_hub.commit("org/a", {"config.json": "{}"})

    report = check_upstreams(recipe_for(tmp_path, publish=False), token=TOKEN)

    assert report.changed and report.lock_source is None
    assert report.upstreams[0].locked is None and "org/a: new" in report.summary()
