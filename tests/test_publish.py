"""Publishing releases to the local Hub: commits, PRs, no-ops, tags and every commit fault."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from pearl_bot.errors import PublishError
from pearl_bot.lock import (
    LOCK_FILENAME,
    PR_MARKER,
    Lock,
    LockedUpstream,
    build_lock,
    read_published_lock,
)
from pearl_bot.publish import PublishResult, expand_tag, publish_folder, push_revision
from pearl_bot.recipe import Recipe, parse_recipe

TOKEN = "hf_test_bot"
REPO = "pearl-bot-tester/merged"
SHA_A1, SHA_A2, SHA_B = "a" * 40, "c" * 40, "b" * 40


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    text = (
        "merge_method: linear\nmodels:\n"
        "  - model: org/a\n    parameters: {weight: 1.0}\n"
        "  - model: org/b\n    parameters: {weight: 1.0}\n"
    )
    (tmp_path / "recipe.yml").write_text(text)
    return parse_recipe(text, path=tmp_path / "recipe.yml")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEARL_BOT_RETRY_BASE_WAIT", "0.01")
    monkeypatch.setenv("PEARL_BOT_RETRY_MAX_WAIT", "5")


def release(
    tmp_path: Path, recipe: Recipe, name: str, *, a: str = SHA_A1, shards: int = 2
) -> tuple[Path, Lock]:
    """A release folder (shards, index, config, card) and its lock; content depends on `name`."""
    folder = tmp_path / name
    folder.mkdir()
    weight_map = {}
    for k in range(1, shards + 1):
        shard = f"model-{k:05d}-of-{shards:05d}.safetensors"
        (folder / shard).write_bytes(hashlib.sha256(f"{name}{k}".encode()).digest() * 512)
        weight_map[f"layer{k}.weight"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "mistral"}')
    (folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {name}\n")
    upstreams = [
        LockedUpstream(key="org/a", repo_id="org/a", tracked="main", revision=a),
        LockedUpstream(key="org/b", repo_id="org/b", tracked="main", revision=SHA_B),
    ]
    return folder, build_lock(recipe, upstreams, numerics="precise", out_dir=folder)


def push(folder: Path, lock: Lock, *, create_pr: bool = False, **kwargs: object) -> PublishResult:
    previous = read_published_lock(REPO, token=TOKEN)
    return push_revision(
        folder, REPO, lock=lock, previous=previous, create_pr=create_pr, private=False,
        token=TOKEN, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def bot_commits(local_hub, ref: str = "main") -> list[dict]:
    return [c for c in local_hub.list_commits(REPO, ref) if c["title"].startswith("pearl-bot:")]


def commit_posts(local_hub) -> list:
    return [r for r in local_hub.requests if r.method == "POST" and "/commit/" in r.path]


def test_first_release_is_one_commit_with_everything(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, "r1")

    result = push(folder, lock)

    assert result.status == "committed" and result.revision == local_hub.head(REPO)
    assert result.commit_url and result.revision in result.commit_url
    files = local_hub.files(REPO)
    for path in lock.outputs:
        assert files[path] == (folder / path).read_bytes()
    assert Lock.from_json(files[LOCK_FILENAME].decode()) == lock
    assert len(bot_commits(local_hub)) == 1 and len(commit_posts(local_hub)) == 1
    assert result.commit_message == "pearl-bot: release merged from 2 upstreams"
    uploads = [i for i, r in enumerate(local_hub.requests) if r.method == "PUT"]
    commit = local_hub.requests.index(commit_posts(local_hub)[0])
    assert len(uploads) == 2 and max(uploads) < commit  # shards preuploaded, then one commit


def test_same_lock_is_no_change(local_hub, hub_api, tmp_path, recipe) -> None:
    folder, lock = release(tmp_path, recipe, "r1")
    first = push(folder, lock)
    local_hub.requests.clear()

    again = push(folder, lock)

    assert again.status == "no-change" and again.revision == first.revision
    assert commit_posts(local_hub) == [] and len(bot_commits(local_hub)) == 1
    assert "no-change" in again.summary()


def test_moved_upstream_is_named_and_stale_shards_removed(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2, shards=1)

    result = push(folder, lock)

    assert result.commit_message == "pearl-bot: org/a moved from aaaaaaa to ccccccc"
    newest = bot_commits(local_hub)[0]
    assert newest["title"] == result.commit_message
    assert "`org/a`: moved from aaaaaaaaaaaa to cccccccccccc" in newest["message"]
    assert "`org/b`: unchanged at bbbbbbbbbbbb" in newest["message"]
    assert "model-00002-of-00002.safetensors" not in local_hub.files(REPO)
    assert "model-00001-of-00001.safetensors" in local_hub.files(REPO)


def test_foreign_commit_since_the_run_started_stops(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2)
    previous = read_published_lock(REPO, token=TOKEN)
    human = local_hub.commit(REPO, {"notes.md": "a human was here"})

    with pytest.raises(PublishError, match=r"changed since the run started.*notes.md"):
        push_revision(
            folder, REPO, lock=lock, previous=previous, create_pr=False, private=False, token=TOKEN
        )

    assert local_hub.head(REPO) == human
    assert [r.status for r in commit_posts(local_hub)] == [200, 412]  # first release, refusal


def test_commit_over_changes_to_the_bots_own_files(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2)
    previous = read_published_lock(REPO, token=TOKEN)
    other = local_hub.commit(REPO, {"README.md": "hand-edited card"})

    result = push_revision(
        folder, REPO, lock=lock, previous=previous, create_pr=False, private=False, token=TOKEN
    )

    assert result.status == "committed"
    assert local_hub.list_commits(REPO)[0]["parents"] == [other]
    assert local_hub.read_file(REPO, "README.md") == (folder / "README.md").read_bytes()


def test_commit_answered_500_but_landed_is_not_duplicated(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, "r1")
    local_hub.add_fault("POST", r"/commit/main", status=500, after_handling=True)

    result = push(folder, lock)

    assert result.status == "committed" and result.revision == local_hub.head(REPO)
    assert len(bot_commits(local_hub)) == 1 and len(commit_posts(local_hub)) == 1


def test_commit_500_before_landing_is_retried_once(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, "r1")
    local_hub.add_fault("POST", r"/commit/main", status=503)

    result = push(folder, lock)

    assert result.status == "committed"
    assert [r.status for r in commit_posts(local_hub)] == [503, 200]
    assert len(bot_commits(local_hub)) == 1


def test_commit_rate_limited_briefly_is_retried(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, "r1")
    headers = {"RateLimit": '"api";r=0;t=0', "RateLimit-Policy": '"fixed window";"api";q=5;w=300'}
    local_hub.add_fault("POST", r"/commit/main", status=429, headers=headers)

    assert push(folder, lock).status == "committed"
    assert [r.status for r in commit_posts(local_hub)] == [429, 200]


def test_commit_rate_limited_for_long_stops_cleanly(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    head = local_hub.head(REPO)
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2)
    local_hub.add_fault(
        "POST", r"/commit/main", status=429, headers={"Retry-After": "3600"}, times=-1
    )
    started = time.monotonic()

    with pytest.raises(PublishError, match=r"429.*nothing was published; rerun in 3600 s"):
        push(folder, lock)

    assert time.monotonic() - started < 5
    assert local_hub.head(REPO) == head
    assert [r.status for r in commit_posts(local_hub)][-1:] == [429]
    assert len(commit_posts(local_hub)) == 2  # the first release, then one refused try


def test_interrupted_upload_resumes_without_resending(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, f"interrupted-{time.time_ns()}")  # bytes never seen
    second = lock.outputs["model-00002-of-00002.safetensors"]
    local_hub.add_fault("PUT", rf"/_lfs/.*/{second}/", status=403)

    with pytest.raises(PublishError, match=r"uploading model-00002-of-00002.safetensors.*403"):
        push(folder, lock)
    assert commit_posts(local_hub) == []
    result = push(folder, lock)

    first = lock.outputs["model-00001-of-00002.safetensors"]
    puts = [r.path for r in local_hub.requests if r.method == "PUT"]
    assert sum(first in p for p in puts) == 1 and sum(second in p for p in puts) == 2
    assert result.status == "committed"


def test_pr_is_opened_then_updated_then_left_alone(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    main_head = local_hub.head(REPO)
    folder2, lock2 = release(tmp_path, recipe, "r2", a=SHA_A2)

    opened = push(folder2, lock2, create_pr=True)

    (pr,) = local_hub.pull_requests(REPO)
    assert opened.status == "pr-opened" and opened.pr_num == pr["num"]
    assert opened.pr_url and opened.pr_url.endswith(f"/discussions/{pr['num']}")
    assert pr["author"] == "pearl-bot-tester" and PR_MARKER in pr["description"]
    assert local_hub.head(REPO) == main_head and pr["head"] == opened.revision

    folder3, lock3 = release(tmp_path, recipe, "r3", a="d" * 40)
    updated = push(folder3, lock3, create_pr=True)

    (pr,) = local_hub.pull_requests(REPO)
    assert updated.status == "pr-updated" and updated.pr_num == opened.pr_num
    assert pr["head"] == updated.revision != opened.revision
    assert pr["title"] == "pearl-bot: org/a moved from aaaaaaa to ddddddd"
    assert "moved from aaaaaaaaaaaa to dddddddddddd" in pr["description"], "edited in place"
    assert PR_MARKER in pr["description"] and pr["comments"] == []
    lock_in_pr = local_hub.read_file(REPO, LOCK_FILENAME, f"refs/pr/{pr['num']}")
    assert Lock.from_json(lock_in_pr.decode()) == lock3

    again = push(folder3, lock3, create_pr=True)
    assert again.status == "no-change" and again.pr_num == opened.pr_num
    assert len(local_hub.pull_requests(REPO)) == 1


def test_someone_elses_pr_is_not_reused(local_hub, hub_api, tmp_path, recipe) -> None:
    push(*release(tmp_path, recipe, "r1"))
    local_hub.open_pull_request(REPO, "mine", description=PR_MARKER, author="a-human")
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2)

    result = push(folder, lock, create_pr=True)

    assert result.status == "pr-opened" and result.pr_num == 2
    assert len(local_hub.pull_requests(REPO)) == 2


def test_new_pr_answered_500_but_landed_is_found(local_hub, hub_api, tmp_path, recipe):
    push(*release(tmp_path, recipe, "r1"))
    folder, lock = release(tmp_path, recipe, "r2", a=SHA_A2)
    local_hub.add_fault("POST", r"/commit/main", status=502, after_handling=True)

    result = push(folder, lock, create_pr=True)

    assert result.status == "pr-opened" and result.pr_num == 1
    assert len(local_hub.pull_requests(REPO)) == 1 and len(commit_posts(local_hub)) == 2


def test_tag_per_release(local_hub, hub_api, tmp_path, recipe) -> None:
    folder, lock = release(tmp_path, recipe, "r1")

    result = push(folder, lock, tag="release-{short_sha}")

    assert result.tag == f"release-{result.revision[:7]}"
    assert local_hub.head(REPO, f"refs/tags/{result.tag}") == result.revision
    assert expand_tag("v{date}", "0" * 40).startswith("v20")


def test_folder_that_does_not_match_its_lock_is_refused(local_hub, hub_api, tmp_path, recipe):
    folder, lock = release(tmp_path, recipe, "r1")
    (folder / "config.json").write_text("{}")

    with pytest.raises(PublishError, match=r"does not match its lock: config.json"):
        push(folder, lock)
    assert commit_posts(local_hub) == []


def test_publish_folder_reads_the_lock_and_creates_a_private_repo(
    local_hub, hub_api, tmp_path, recipe
) -> None:
    folder, lock = release(tmp_path, recipe, "r1")
    (folder / LOCK_FILENAME).write_text(lock.to_json())

    result = publish_folder(folder, REPO, create_pr=False, private=True, token=TOKEN)

    assert result.status == "committed"
    assert hub_api.model_info(REPO).private is True
    assert publish_folder(folder, REPO, create_pr=False, private=True, token=TOKEN).status == (
        "no-change"
    )
