"""The merge engine end to end: output layout, determinism, vocabularies and bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pearl_bot.errors import MergeError
from pearl_bot.merge import merge_recipe
from pearl_bot.recipe import Recipe
from pearl_bot.testing.models import TinyConfig, build_family, random_weights, write_model


def ties(fam: dict[str, Path], extra: str = "", base: str = "base") -> str:
    return f"""
models:
  - model: {fam[base]}
  - model: {fam["ft_a"]}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {fam["ft_b"]}
    parameters: {{weight: 0.5, density: 0.7}}
merge_method: ties
base_model: {fam[base]}
dtype: bfloat16
{extra}
"""


def test_output_is_one_file_with_config_tokenizer_and_recorded_numerics(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = merge_recipe(write_recipe(ties(tiny_family_bf16)), out, progress=False)
    assert result.files == sorted(
        [
            "config.json",
            "generation_config.json",
            "mergekit_config.yml",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == result.files
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "pearl_bot_numerics": "precise"}
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    assert "pearl_bot" not in (out / "mergekit_config.yml").read_text()
    assert result.tensor_count == 39 and result.numerics == "precise"
    assert "39 tensors" in result.summary() and result.to_dict()["method"] == "ties"


def test_shards_and_index_when_the_model_exceeds_the_shard_size(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = merge_recipe(
        write_recipe(ties(tiny_family_bf16)), out, shard_size=100_000, progress=False
    )
    shards = [f for f in result.files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged |= load_file(out / shard)
    assert index["weight_map"] == {n: index["weight_map"][n] for n in sorted(merged)}
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in merged.values()
    )
    single = tmp_path / "single"
    merge_recipe(write_recipe(ties(tiny_family_bf16)), single, progress=False)
    expected = load_file(single / "model.safetensors")
    assert all(torch.equal(merged[n], expected[n]) for n in expected)


@pytest.mark.parametrize("numerics", ["precise", "mergekit"])
def test_reruns_are_byte_identical_including_dare(
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    numerics: str,
) -> None:
    fam = tiny_family_bf16
    text = ties(fam, "build: {seed: 7}").replace("merge_method: ties", "merge_method: dare_ties")
    recipe = write_recipe(text)
    for name in ("one", "two"):
        merge_recipe(recipe, tmp_path / name, numerics=numerics, progress=False)
    for file in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()
    reseeded = write_recipe(text.replace("seed: 7", "seed: 8"))
    merge_recipe(reseeded, tmp_path / "three", numerics=numerics, progress=False)
    one = (tmp_path / "one" / "model.safetensors").read_bytes()
    assert one != (tmp_path / "three" / "model.safetensors").read_bytes()


def test_vocab_extension_needs_tokenizer_source_base(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    fam = dict(tiny_family_bf16)
    config = TinyConfig(num_hidden_layers=4, dtype="bfloat16", vocab_size=65)
    fam["ft_b"] = write_model(tmp_path / "big", random_weights(config, 9), config)
    with pytest.raises(MergeError, match="'lm_head.weight' has 65 rows .* but 64"):
        merge_recipe(write_recipe(ties(fam)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    merge_recipe(write_recipe(ties(fam, "tokenizer_source: base")), tmp_path / "ok", progress=False)
    merged = load_file(tmp_path / "ok" / "model.safetensors")
    assert merged["model.embed_tokens.weight"].shape == (64, 64)


def test_tied_base_with_untied_fine_tune_writes_lm_head_and_untied_config(
    write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    tied = TinyConfig(tie_word_embeddings=True)
    fam = build_family(tmp_path / "fam", ["base", "ft_a"], tied, seed=2)
    fam["ft_b"] = build_family(tmp_path / "fam2", ["x", "ft_b"], TinyConfig(), seed=2)["ft_b"]
    merge_recipe(write_recipe(ties(fam)), tmp_path / "out", progress=False)
    assert "lm_head.weight" in load_file(tmp_path / "out" / "model.safetensors")
    assert (
        json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    )
    only_tied = f"""
models:
  - model: {fam["base"]}
  - model: {fam["ft_a"]}
    parameters: {{weight: 1.0}}
merge_method: task_arithmetic
base_model: {fam["base"]}
"""
    merge_recipe(write_recipe(only_tied), tmp_path / "tied", progress=False)
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    assert (
        json.loads((tmp_path / "tied" / "config.json").read_text())["tie_word_embeddings"] is True
    )


def _broken_family(fam: dict[str, Path], tmp_path: Path, how: str) -> dict[str, Path]:
    broken = tmp_path / f"broken-{how}"
    shutil.copytree(fam["ft_b"], broken)
    weights = broken / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "lfs":
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n")
    elif how == "empty":
        weights.unlink()
    elif how == "shape":
        state = load_file(weights)
        state["model.norm.weight"] = torch.ones(65, dtype=torch.bfloat16)
        save_file(state, str(weights))
    elif how == "pickle":
        torch.save(load_file(weights), broken / "pytorch_model.bin")
        weights.unlink()
    elif how == "nan":
        state = load_file(weights)
        state["model.norm.weight"][3] = float("nan")
        save_file(state, str(weights))
    return {**fam, "ft_b": broken}


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "cannot parse the safetensors header .*truncated"),
        ("lfs", "Git LFS pointer"),
        ("empty", "no tensors in the model folder"),
        ("shape", "'model.norm.weight' has shape \\[65\\]"),
        ("pickle", "only pickle \\(.bin\\) weights.*--allow-pickle"),
        ("nan", "'model.norm.weight' contains NaN"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_output(
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    how: str,
    message: str,
) -> None:
    fam = _broken_family(tiny_family_bf16, tmp_path, how)
    with pytest.raises(MergeError, match=message):
        merge_recipe(write_recipe(ties(fam)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_pickle_inputs_load_with_allow_pickle(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    fam = _broken_family(tiny_family_bf16, tmp_path, "pickle")
    recipe = write_recipe(ties(fam))
    merge_recipe(recipe, tmp_path / "a", allow_pickle=True, progress=False)
    merge_recipe(write_recipe(ties(tiny_family_bf16)), tmp_path / "b", progress=False)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_missing_folders_devices_and_existing_output_are_refused(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    fam = tiny_family_bf16
    hub = ties(fam).replace(f"base_model: {fam['base']}", "base_model: org/base")
    hub = hub.replace(f"  - model: {fam['base']}\n", "  - model: org/base\n")
    with pytest.raises(MergeError, match="'org/base' has no local folder; download it first"):
        merge_recipe(write_recipe(hub), tmp_path / "out", progress=False)
    with pytest.raises(MergeError, match="model folder of 'org/base' not found"):
        merge_recipe(
            write_recipe(hub), tmp_path / "out", model_dirs={"org/base": tmp_path / "nowhere"}
        )
    if not torch.cuda.is_available():
        with pytest.raises(MergeError, match="CUDA is not available"):
            merge_recipe(write_recipe(ties(fam)), tmp_path / "out", device="cuda")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MergeError, match="already exists and is not empty"):
        merge_recipe(write_recipe(ties(fam)), tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert not (tmp_path / "out").exists()
