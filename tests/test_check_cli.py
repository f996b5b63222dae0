"""`pearl-bot check` and `pearl-bot publish` from the command line, against the local Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pearl_bot.cli import main
from pearl_bot.lock import LOCK_FILENAME, LockedUpstream, build_lock
from pearl_bot.recipe import load_recipe

REPO = "pearl-bot-tester/merged"


@pytest.fixture
def bot_token(monkeypatch: pytest.MonkeyPatch, hub_api) -> None:
    """The CLI takes its token from HF_TOKEN, as in an Action; conftest disables implicit ones."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_TOKEN", "hf_test_bot")
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)


def write_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(
        "merge_method: linear\nmodels:\n"
        "  - model: org/a\n    parameters: {weight: 1.0}\n"
        "  - model: org/b@v1\n    parameters: {weight: 1.0}\n"
        f"publish:\n  repo_id: {REPO}\n"
    )
    return path


def test_check_json_names_the_moved_upstream(local_hub, bot_token, tmp_path, capsys) -> None:
    a_old = local_hub.commit("org/a", {"config.json": "{}"})
    b = local_hub.commit("org/b", {"config.json": "{}"})
    local_hub.create_tag("org/b", "v1")
    recipe_path = write_recipe(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    ups = [
        LockedUpstream(key="org/a", repo_id="org/a", tracked="main", revision=a_old),
        LockedUpstream(key="org/b@v1", repo_id="org/b", tracked="v1", revision=b),
    ]
    lock = build_lock(load_recipe(recipe_path), ups, numerics="precise", out_dir=out)
    local_hub.commit(REPO, {LOCK_FILENAME: lock.to_json()})
    a_new = local_hub.commit("org/a", {"config.json": '{"v": 2}'})

    assert main(["check", str(recipe_path), "--json"]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["changed"] is True and data["repo_id"] == REPO
    by_key = {u["key"]: u for u in data["upstreams"]}
    assert (by_key["org/a"]["locked"], by_key["org/a"]["current"]) == (a_old, a_new)
    assert by_key["org/b@v1"]["moved"] is False and by_key["org/b@v1"]["tracked"] == "v1"


def test_check_text_and_a_clear_error(local_hub, bot_token, tmp_path, capsys) -> None:
    local_hub.commit("org/a", {"config.json": "{}"})
    recipe_path = write_recipe(tmp_path)

    assert main(["check", str(recipe_path)]) == 1

    err = capsys.readouterr().err
    assert "upstream 'org/b' was not found" in err and "`models[1].model`" in err


def test_publish_cli_prints_the_commit(local_hub, bot_token, tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)

    assert main(["publish", str(folder), "--repo", REPO, "--json"]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "committed" and data["revision"] == local_hub.head(REPO)
    assert data["files"] == {"config.json": 2, "model.safetensors": 4096}
    assert local_hub.read_file(REPO, "model.safetensors") == b"\0" * 4096
