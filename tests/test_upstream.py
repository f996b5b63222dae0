"""Resolving upstream revisions against the local Hub with the real huggingface_hub client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pearl_bot.errors import UpstreamError
from pearl_bot.recipe import Recipe, parse_recipe
from pearl_bot.upstream import local_revision, resolve_revisions

TOKEN = "hf_test_bot"


def linear_recipe(tmp_path: Path, *models: str) -> Recipe:
    """A linear recipe over `models` (equal weights), written next to `tmp_path`."""
    lines = ["merge_method: linear", "models:"]
    for model in models:
        lines += [f"  - model: {model}", "    parameters: {weight: 1.0}"]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "recipe.yml"
    path.write_text(text)
    return parse_recipe(text, path=path)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEARL_BOT_RETRY_BASE_WAIT", "0.01")
    monkeypatch.setenv("PEARL_BOT_RETRY_MAX_WAIT", "5")


def test_resolves_main_branch_tag_and_pinned_sha(local_hub, hub_api, tmp_path: Path) -> None:
    first = local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.create_tag("org/a", "v1")
    local_hub.create_branch("org/a", "dev")
    second = local_hub.commit("org/a", {"config.json": '{"a": 1}'})
    dev = local_hub.commit("org/a", {"config.json": '{"b": 2}'}, branch="dev")
    recipe = linear_recipe(tmp_path, "org/a", "org/a@v1", "org/a@dev", f"org/a@{first}")

    got = resolve_revisions(recipe, token=TOKEN)

    assert [(u.key, u.tracked, u.revision) for u in got] == [
        ("org/a", "main", second),
        ("org/a@v1", "v1", first),
        ("org/a@dev", "dev", dev),
        (f"org/a@{first}", first, first),
    ]
    assert all(u.repo_id == "org/a" and not u.files for u in got)


def test_one_cheap_call_per_upstream(local_hub, hub_api, tmp_path: Path) -> None:
    for name in ("org/a", "org/b"):
        local_hub.commit(name, {"config.json": "{}", "model.safetensors": b"x" * 100})
    local_hub.requests.clear()

    resolve_revisions(linear_recipe(tmp_path, "org/a", "org/b"), token=TOKEN)

    paths = [r.path for r in local_hub.requests]
    assert len(paths) == 2
    assert all("expand=sha" in p and "/resolve/" not in p for p in paths)


def test_renamed_repo_records_the_canonical_id(local_hub, hub_api, tmp_path: Path) -> None:
    sha = local_hub.commit("org/old", {"config.json": "{}"})
    local_hub.rename_repo("org/old", "org/new")

    (got,) = resolve_revisions(linear_recipe(tmp_path, "org/old"), token=TOKEN)

    assert (got.key, got.repo_id, got.revision) == ("org/old", "org/new", sha)


def test_missing_private_and_deleted_repos_name_the_field(
    local_hub, hub_api, tmp_path: Path
) -> None:
    local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.create_repo("org/secret", private=True, owner="someone-else")
    local_hub.commit("org/gone", {"config.json": "{}"})
    local_hub.delete_repo("org/gone")
    for missing in ("org/secret", "org/gone", "org/never"):
        with pytest.raises(UpstreamError) as err:
            resolve_revisions(linear_recipe(tmp_path, "org/a", missing), token=TOKEN)
        assert err.value.repo_id == missing
        assert f"upstream '{missing}' was not found" in str(err.value)
        assert "`models[1].model`" in str(err.value)


def test_vanished_tag_is_its_own_error(local_hub, hub_api, tmp_path: Path) -> None:
    local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.create_tag("org/a", "v1")
    local_hub.delete_ref("org/a", "refs/tags/v1")

    with pytest.raises(UpstreamError, match=r"has no revision 'v1'.*update `models\[0\].model`"):
        resolve_revisions(linear_recipe(tmp_path, "org/a@v1"), token=TOKEN)


def test_local_folder_is_a_content_hash_without_network(local_hub, tmp_path: Path) -> None:
    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "notes.md").write_text("not a model file")
    recipe = linear_recipe(tmp_path, "./local-model")

    (got,) = resolve_revisions(recipe)

    assert got.is_local and got.revision.startswith("sha256:") and len(got.revision) == 71
    assert local_hub.requests == []
    (folder / "notes.md").write_text("edited")
    assert local_revision(folder) == got.revision
    (folder / "model.safetensors").write_bytes(b"weights2")
    assert local_revision(folder) != got.revision


def test_rate_limit_on_resolve_is_waited_out(
    local_hub, hub_api, tmp_path: Path, fast_retries: None
) -> None:
    sha = local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.add_fault(
        "GET", r"/api/models/org/a/revision", status=429, headers={"RateLimit": '"api";r=0;t=0'}
    )
    local_hub.add_fault("GET", r"/api/models/org/a/revision", status=503)

    (got,) = resolve_revisions(linear_recipe(tmp_path, "org/a"), token=TOKEN)

    assert got.revision == sha
    assert [r.status for r in local_hub.requests] == [429, 503, 200]


def test_long_rate_limit_stops_cleanly(
    local_hub, hub_api, tmp_path: Path, fast_retries: None
) -> None:
    local_hub.commit("org/a", {"config.json": "{}"})
    local_hub.add_fault(
        "GET", r"/api/models/org/a", status=429, headers={"Retry-After": "3600"}, times=-1
    )
    started = time.monotonic()

    with pytest.raises(UpstreamError, match=r"429.*retry after 3600 s.*rerun later"):
        resolve_revisions(linear_recipe(tmp_path, "org/a"), token=TOKEN)

    assert time.monotonic() - started < 5
    assert len(local_hub.requests) == 1
