"""Peer tests: pearl-bot's merge against mergekit 0.1.5 on tiny Mistral-shaped families.

`--numerics mergekit` must give byte-identical tensors. `precise` on float32 recipes may differ
only where a trim threshold is tied or where the sign election sums to zero; every differing
element is attributed to one of these causes, not counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pearl_bot.merge import merge_recipe
from pearl_bot.recipe import Recipe

pytestmark = pytest.mark.peer


def run_mergekit(recipe: Recipe, out: Path) -> dict[str, torch.Tensor]:
    """Run mergekit 0.1.5 in-process on the recipe's mergekit part."""
    import yaml

    # mergekit and transformers raise deprecation warnings of their own on import and use;
    # they are not ours to fix, and pytest turns warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge

        config = MergeConfiguration.model_validate(yaml.safe_load(recipe.mergekit_yaml()))
        options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
        run_merge(config, str(out), options)
    return load_file(out / "model.safetensors")


def run_ours(recipe: Recipe, out: Path, numerics: str) -> dict[str, torch.Tensor]:
    merge_recipe(recipe, out, numerics=numerics, progress=False)
    return load_file(out / "model.safetensors")


def assert_bit_identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(
            ours[name].view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)
        ), name


def ties_recipe(family: dict[str, Path], dtype: str, method: str = "ties") -> str:
    return f"""
models:
  - model: {family["base"]}
  - model: {family["ft_a"]}
    parameters: {{density: [1, 0.7, 0.1], weight: 0.5}}
  - model: {family["ft_b"]}
    parameters: {{density: 0.5, weight: [0.2, 0.8]}}
  - model: {family["ft_c"]}
    parameters:
      density: 0.3
      weight:
        - filter: mlp
          value: 0.7
        - value: -0.3
merge_method: {method}
base_model: {family["base"]}
parameters: {{normalize: true, int8_mask: true}}
dtype: {dtype}
"""


def slerp_recipe(family: dict[str, Path], dtype: str, span: tuple[int, int]) -> str:
    return f"""
slices:
  - sources:
      - model: {family["base"]}
        layer_range: [{span[0]}, {span[1]}]
      - model: {family["ft_b"]}
        layer_range: [{span[0]}, {span[1]}]
merge_method: slerp
base_model: {family["base"]}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: {dtype}
"""


def other_recipes(family: dict[str, Path], dtype: str) -> list[str]:
    base, a, b = family["base"], family["ft_a"], family["ft_b"]
    return [
        f"""
models:
  - model: {a}
    parameters: {{weight: [0.2, 1.0]}}
  - model: {b}
    parameters: {{weight: 0.6}}
merge_method: linear
dtype: {dtype}
""",
        f"""
models:
  - model: {a}
    parameters: {{weight: 0.7}}
  - model: {b}
    parameters: {{weight: -0.4}}
merge_method: task_arithmetic
base_model: {base}
parameters: {{lambda: 0.9}}
dtype: {dtype}
""",
        f"""
models:
  - model: {a}
    parameters: {{weight: 0.5, density: 1.0}}
  - model: {b}
    parameters: {{weight: 0.5}}
merge_method: dare_ties
base_model: {base}
dtype: {dtype}
""",
    ]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mergekit_numerics_are_bit_identical_for_ties(
    tiny_family: dict[str, Path],
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    dtype: str,
) -> None:
    family = tiny_family if dtype == "float32" else tiny_family_bf16
    recipe = write_recipe(ties_recipe(family, dtype))
    theirs = run_mergekit(recipe, tmp_path / "mk")
    assert_bit_identical(run_ours(recipe, tmp_path / "ours", "mergekit"), theirs)


@pytest.mark.parametrize("span", [(0, 4), (1, 3)])
def test_mergekit_numerics_are_bit_identical_for_slerp_slices(
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    span: tuple[int, int],
) -> None:
    recipe = write_recipe(slerp_recipe(tiny_family_bf16, "bfloat16", span))
    theirs = run_mergekit(recipe, tmp_path / "mk")
    assert_bit_identical(run_ours(recipe, tmp_path / "ours", "mergekit"), theirs)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_mergekit_numerics_are_bit_identical_for_other_methods(
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    case: int,
) -> None:
    recipe = write_recipe(other_recipes(tiny_family_bf16, "bfloat16")[case])
    theirs = run_mergekit(recipe, tmp_path / "mk")
    assert_bit_identical(run_ours(recipe, tmp_path / "ours", "mergekit"), theirs)


def _tie_positions(recipe: Recipe, name: str, family: dict[str, Path]) -> torch.Tensor:
    """Per element of tensor `name`: whether some model's |delta| equals its trim threshold.

    The engine keeps mergekit's summation order, so its election sums equal mergekit's
    wherever the trims agree: a tie is the only way for the two to differ."""
    from pearl_bot.merge.params import Scope, gradient_t, layer_index, resolve_tensor

    base = load_file(family["base"] / "model.safetensors")[name].float()
    models = recipe.non_base_models()
    params = resolve_tensor(
        recipe.method,
        name,
        name,
        gradient_t(layer_index(name), 4),
        [[Scope(m.parameters, m.field)] for m in models],
        [Scope(recipe.data.parameters, "parameters")],
        [m.ref.key for m in models],
    )
    tied = torch.zeros(base.numel(), dtype=torch.bool)
    for m, p in zip(models, params.per_model, strict=True):
        delta = (load_file(m.ref.path / "model.safetensors")[name].float() - base).reshape(-1)
        density = p["density"]
        if 0 < density < 1:
            k = max(1, int(density * delta.numel()))
            threshold = delta.abs().sort(descending=True).values[k - 1]
            tied |= delta.abs() == threshold
    return tied


def test_precise_differs_from_mergekit_only_at_ties_on_float32(
    tiny_family: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    # The float32 family has no tied magnitudes; rounding the fine-tunes' deltas to a coarse
    # grid creates many, so the attribution has something to attribute.
    family = dict(tiny_family)
    for name in ("ft_a", "ft_b", "ft_c"):
        family[name] = _quantised_copy(tiny_family["base"], tiny_family[name], tmp_path / name)
    recipe = write_recipe(ties_recipe(family, "float32"))
    theirs = run_mergekit(recipe, tmp_path / "mk")
    ours = run_ours(recipe, tmp_path / "ours", "precise")
    differing = 0
    for name, tensor in theirs.items():
        diff = (ours[name] != tensor).reshape(-1)
        if not diff.any():
            continue
        tied = _tie_positions(recipe, name, family)
        unexplained = diff & ~tied
        assert not unexplained.any(), f"{name}: {int(unexplained.sum())} differences off ties"
        differing += int(diff.sum())
    assert differing > 0  # the quantised family does exercise tie-breaking


def _quantised_copy(base_dir: Path, model_dir: Path, out: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(model_dir, out)
    base = load_file(base_dir / "model.safetensors")
    weights = load_file(model_dir / "model.safetensors")
    step = 2.0**-9
    rounded = {n: base[n] + torch.round((t - base[n]) / step) * step for n, t in weights.items()}
    save_file(rounded, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_float32_sort_keys_give_the_same_bits_when_integer_keys_would_sort_differently(
    tiny_family_bf16: dict[str, Path],
    write_recipe: Callable[[str], Recipe],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a torch build sorts integer keys with another algorithm than float32 keys (x86-simd
    -sort), the engine sorts float32 keys as mergekit does; the output must not change."""
    from pearl_bot.merge import compat

    monkeypatch.setattr(compat, "sorts_like_float32", lambda key_dtype: False)
    assert compat.sort_keys(torch.ones(4, dtype=torch.bfloat16)).dtype == torch.float32

    recipe = write_recipe(ties_recipe(tiny_family_bf16, "bfloat16"))
    theirs = run_mergekit(recipe, tmp_path / "mk")
    assert_bit_identical(run_ours(recipe, tmp_path / "ours", "mergekit"), theirs)
