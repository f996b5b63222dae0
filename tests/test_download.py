"""Downloading upstreams at exact shas through huggingface_hub, from the local Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pearl_bot.download import fetch_models
from pearl_bot.errors import UpstreamError
from pearl_bot.lock import Lock, write_lock
from pearl_bot.recipe import Recipe, parse_recipe
from pearl_bot.testing.models import TinyConfig, build_family

TOKEN = "hf_test_bot"
SMALL = TinyConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, vocab_size=48)


def linear_recipe(tmp_path: Path, *models: str) -> Recipe:
    lines = ["merge_method: linear", "models:"]
    for model in models:
        lines += [f"  - model: {model}", "    parameters: {weight: 1.0}"]
    text = "\n".join(lines) + "\n"
    (tmp_path / "recipe.yml").write_text(text)
    return parse_recipe(text, path=tmp_path / "recipe.yml")


@pytest.fixture
def family(tmp_path: Path) -> dict[str, Path]:
    return build_family(tmp_path / "family", ["org/base", "org/ft"], SMALL, shards=2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetches_only_merge_files_at_the_sha(local_hub, hub_api, tmp_path, family) -> None:
    sha = local_hub.commit_folder("org/base", family["org/base"])
    local_hub.commit(
        "org/base",
        {"README.md": "card", "pytorch_model.bin": b"pickle", "onnx/model.onnx": b"o"},
    )
    local_hub.commit_folder("org/ft", family["org/ft"])
    recipe = linear_recipe(tmp_path, f"org/base@{sha}", "org/ft")

    got = fetch_models(recipe, token=TOKEN, cache_dir=tmp_path / "cache")

    folder = got[f"org/base@{sha}"]
    assert folder.is_relative_to(tmp_path / "cache") and folder.name == sha
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in family["org/base"].iterdir())
    assert not any(".bin" in r.path or "onnx" in r.path for r in local_hub.requests)
    shard = "model-00001-of-00002.safetensors"
    assert sha256(folder / shard) == sha256(family["org/base"] / shard)


def test_records_the_files_each_upstream_contributed(local_hub, hub_api, tmp_path, family):
    local_hub.commit_folder("org/base", family["org/base"])

    got = fetch_models(linear_recipe(tmp_path, "org/base"), token=TOKEN)

    (up,) = got.upstreams
    files = {f.path: f for f in up.files}
    shard = files["model-00002-of-00002.safetensors"]
    assert shard.sha256 == sha256(family["org/base"] / shard.path)
    assert shard.size == (family["org/base"] / shard.path).stat().st_size
    assert files["config.json"].blob_id is not None and files["config.json"].sha256 is None
    assert up.revision == local_hub.head("org/base")


def test_pickle_only_needs_allow_pickle(local_hub, hub_api, tmp_path: Path) -> None:
    local_hub.commit("org/old", {"config.json": "{}", "pytorch_model.bin": b"\x80pickle"})
    recipe = linear_recipe(tmp_path, "org/old")

    with pytest.raises(UpstreamError, match=r"only pickle weights.*--allow-pickle"):
        fetch_models(recipe, token=TOKEN)
    got = fetch_models(recipe, token=TOKEN, allow_pickle=True)

    assert (got["org/old"] / "pytorch_model.bin").read_bytes() == b"\x80pickle"


def test_safetensors_preferred_over_pickle(local_hub, hub_api, tmp_path: Path) -> None:
    files = {"config.json": "{}", "pytorch_model.bin": b"p", "model.safetensors": b"s" * 64}
    local_hub.commit("org/both", files)

    got = fetch_models(linear_recipe(tmp_path, "org/both"), token=TOKEN, allow_pickle=True)

    assert sorted(p.name for p in got["org/both"].iterdir()) == ["config.json", "model.safetensors"]


def test_local_folder_maps_to_itself_without_network(local_hub, tmp_path, family) -> None:
    target = tmp_path / "mine"
    family["org/ft"].rename(target)

    got = fetch_models(linear_recipe(tmp_path, "./mine"))

    assert got["./mine"] == target.resolve()
    assert {f.path for f in got.upstreams[0].files} >= {"config.json", "tokenizer.json"}
    assert local_hub.requests == []


def test_lock_pins_the_old_revision(local_hub, hub_api, tmp_path: Path) -> None:
    old = local_hub.commit("org/a", {"config.json": '{"v": 1}', "model.safetensors": b"w1"})
    recipe = linear_recipe(tmp_path, "org/a")
    locked = fetch_models(recipe, token=TOKEN).upstreams
    lock = Lock(
        pearl_bot_version="0",
        recipe_sha256=recipe.sha256,
        merge_method="linear",
        numerics="precise",
        upstreams=locked,
    )
    local_hub.commit("org/a", {"config.json": '{"v": 2}', "model.safetensors": b"w2"})

    got = fetch_models(recipe, lock_path=write_lock(lock, tmp_path), token=TOKEN)

    assert got["org/a"].name == old
    assert (got["org/a"] / "config.json").read_text() == '{"v": 1}'


def test_dropped_connection_mid_download_resumes(local_hub, hub_api, tmp_path, family):
    local_hub.commit_folder("org/base", family["org/base"])
    local_hub.add_fault("GET", r"/_cdn/", status=200, drop_after_bytes=1000)

    got = fetch_models(linear_recipe(tmp_path, "org/base"), token=TOKEN)

    shard = "model-00001-of-00002.safetensors"
    assert sha256(got["org/base"] / shard) == sha256(family["org/base"] / shard)
    cdn = [r for r in local_hub.requests if r.path.startswith("/_cdn/") and shard in r.path]
    assert len(cdn) == 2  # the dropped transfer, then the retry that completed it


def test_failed_download_returns_nothing(local_hub, hub_api, tmp_path, family) -> None:
    local_hub.commit_folder("org/base", family["org/base"])
    local_hub.add_fault("GET", r"/_cdn/", status=500, times=-1)

    with pytest.raises(UpstreamError, match=r"the Hub failed on upstream 'org/base'.*500"):
        fetch_models(linear_recipe(tmp_path, "org/base"), token=TOKEN)


def test_gated_upstream_without_access(local_hub, hub_api, tmp_path: Path) -> None:
    local_hub.commit("org/gated", {"config.json": "{}", "model.safetensors": b"w"})
    local_hub.update_repo("org/gated", gated="manual")
    recipe = linear_recipe(tmp_path, "org/gated")

    with pytest.raises(UpstreamError, match=r"'org/gated' is gated.*request access at http"):
        fetch_models(recipe, token=TOKEN)
    local_hub.grant_access("org/gated", "pearl-bot-tester")
    assert (fetch_models(recipe, token=TOKEN)["org/gated"] / "model.safetensors").exists()


def test_missing_config_is_named(local_hub, hub_api, tmp_path: Path) -> None:
    local_hub.commit("org/noconf", {"model.safetensors": b"w"})

    with pytest.raises(UpstreamError, match=r"'org/noconf' at [0-9a-f]{12} has no config.json"):
        fetch_models(linear_recipe(tmp_path, "org/noconf"), token=TOKEN)
