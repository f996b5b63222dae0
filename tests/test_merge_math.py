"""The merge arithmetic on hand-made tensors: trim, elect sign, disjoint merge, DARE, keys,
parameter resolution, and a float64 reference of the precise semantics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pearl_bot.errors import MergeError
from pearl_bot.merge import merge_recipe, parse_size
from pearl_bot.merge.compat import agreement_divisor, sort_keys, trim_batched
from pearl_bot.merge.params import Scope, evaluate, gradient_t, resolve, resolve_tensor
from pearl_bot.merge.precise import (
    Accumulator,
    Dropper,
    Trimmer,
    dare_generator,
    divisor_table,
    select_threshold,
)
from pearl_bot.merge.spec import METHODS, ParamSpec
from pearl_bot.recipe import Recipe


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, int(density * delta.numel()))
    return Trimmer(select_threshold(delta.abs().reshape(-1), k))(delta.reshape(-1))


def test_trim_keeps_k_largest_and_breaks_ties_by_lowest_index() -> None:
    delta = torch.tensor([0.4, -0.2, 0.2, 0.1, -0.2, 0.3])
    assert trim(delta, 0.5).tolist() == pytest.approx([0.4, -0.2, 0.0, 0.0, 0.0, 0.3])


def test_trim_of_a_2x3_tensor_counts_the_whole_tensor() -> None:
    delta = torch.tensor([[0.5, -0.1, 0.3], [-0.3, 0.05, 0.2]])
    # k = int(0.5 * 6) = 3: 0.5, then the two tied 0.3 magnitudes.
    assert trim(delta, 0.5).tolist() == pytest.approx([0.5, 0.0, 0.3, -0.3, 0.0, 0.0])


def test_threshold_select_matches_a_stable_sort_on_tie_heavy_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, density in [(300_000, 0.5), (300_000, 0.07), (1000, 0.3)]:
        delta = (torch.randn(n, generator=gen) * 0.01).bfloat16().float()
        k = max(1, int(density * n))
        order = torch.sort(delta.abs(), descending=True, stable=True).indices[:k]
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order] = True
        kept = Trimmer(select_threshold(delta.abs(), k))(delta) != 0
        assert torch.equal(kept, expected & (delta != 0))


def test_elect_sign_and_disjoint_merge() -> None:
    taus = [torch.tensor([0.2, -0.1, 0.0, 0.1]), torch.tensor([-0.3, -0.2, 0.1, -0.1])]
    acc = Accumulator(taus[0], divisor_table([1.0, 1.0], torch.device("cpu")))
    for tau in taus:
        acc.add(tau)
    # sums: -0.1 (elect -), -0.3 (-), 0.1 (+), 0.0 (zero sum elects +)
    assert acc.merged(True, 2.0).tolist() == pytest.approx([-0.3, -0.15, 0.1, 0.1])


def test_disjoint_merge_divides_by_the_agreeing_weights() -> None:
    weights = [0.5, 0.25, 2.0]
    deltas = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])]
    acc = Accumulator(deltas[0], divisor_table(weights, torch.device("cpu")))
    for w, d in zip(weights, deltas, strict=True):
        acc.add(d * w)
    # element 0: taus 0.5, 0.25, -2 -> sum -1.25, elect -: -2 / 2 = -1
    # element 1: taus 0.5, -0.25, 2 -> sum 2.25, elect +: (0.5 + 2) / (0.5 + 2) = 1
    assert acc.merged(True, sum(weights)).tolist() == pytest.approx([-1.0, 1.0])
    assert acc.merged(False, sum(weights)).tolist() == pytest.approx([-2.0, 2.5])


def test_dare_drop_is_seeded_by_recipe_seed_tensor_and_model() -> None:
    delta = torch.ones(100_000)
    first = Dropper(dare_generator(42, "model.norm.weight", 1), 0.3)(delta)
    again = Dropper(dare_generator(42, "model.norm.weight", 1), 0.3)(delta)
    other = Dropper(dare_generator(42, "model.norm.weight", 2), 0.3)(delta)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert abs(float(first.mean()) - 0.3) < 0.01


def test_integer_keys_and_batched_argsort_give_mergekit_permutation() -> None:
    gen = torch.Generator().manual_seed(1)
    deltas = (torch.randn(2, 200_000, generator=gen) * 0.002).bfloat16()
    expected = deltas.clone()
    for row in range(2):
        order = torch.argsort(expected[row].abs().float(), descending=True)[:100_000]
        mask = torch.zeros(200_000, dtype=torch.bfloat16)
        mask[order] = 1
        expected[row] = expected[row] * mask
    assert torch.equal(
        sort_keys(deltas.abs()).argsort(dim=1, descending=True)[0],
        torch.argsort(deltas[0].abs().float(), descending=True),
    )
    trim_batched(deltas, [0.5, 0.5], rows=2)
    assert torch.equal(deltas.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_trim_matches_a_float32_key_scatter_for_each_working_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(3, 300_000, generator=gen).to(dtype)
    deltas = (base + torch.randn(3, 300_000, generator=gen) * 0.002).to(dtype) - base
    expected = deltas.clone()
    for row, density in enumerate([0.6, 0.5, 0.4]):
        order = torch.argsort(expected[row].abs().float(), descending=True)
        mask = torch.zeros(300_000, dtype=dtype)
        mask[order[: int(density * 300_000)]] = 1
        expected[row] = expected[row] * mask
    trim_batched(deltas, [0.6, 0.5, 0.4], rows=2)
    # Bit patterns, so the -0.0 of trimmed negative deltas must match too.
    key = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(deltas.view(key), expected.view(key))


def test_agreement_divisor_table_matches_the_direct_sum() -> None:
    gen = torch.Generator().manual_seed(3)
    for count in (1, 3, 4, 9):
        agree = torch.rand(count, 7, 5, generator=gen) > 0.5
        w = torch.rand(count, generator=gen).bfloat16().reshape(-1, 1, 1)
        direct = (w * agree).sum(dim=0)
        direct[direct == 0] = 1
        assert torch.equal(agreement_divisor(w, agree).view(torch.int16), direct.view(torch.int16))


def test_gradients_interpolate_per_layer_and_filters_pick_the_first_match() -> None:
    spec = ParamSpec("t", "float")
    assert evaluate([0.0, 1.0, 0.0], "x", 0.25, spec) == pytest.approx(0.5)
    # layer 2 of 4: t = 2/3, s = 8/3 -> between values[2] = 0.3 and values[3] = 0.7 at 2/3
    expected = 0.3 / 3 + 0.7 * 2 / 3
    assert evaluate([0, 0.5, 0.3, 0.7, 1], "x", gradient_t(2, 4), spec) == pytest.approx(expected)
    assert gradient_t(None, 4) == 0.0 and gradient_t(0, 1) == 1.0
    filters = [{"filter": "mlp", "value": 0.7}, {"value": 0.1}]
    assert evaluate(filters, "model.layers.0.mlp.up_proj.weight", 0, spec) == 0.7
    assert evaluate(filters, "model.norm.weight", 0, spec) == 0.1
    assert evaluate([{"filter": "mlp", "value": 1.0}], "model.norm.weight", 0, spec) is None


def test_precedence_is_model_then_slice_then_global_then_default() -> None:
    density = ParamSpec("density", "float", default=1.0)
    model = Scope({"density": [{"filter": "mlp", "value": 0.2}]}, "models[1].parameters")
    glob = Scope({"density": 0.6}, "parameters")
    assert resolve(density, [model, glob], "a.mlp.b", 0, "m") == 0.2
    assert resolve(density, [model, glob], "a.attn.b", 0, "m") == 0.6  # filter falls through
    assert resolve(density, [], "a", 0, "m") == 1.0
    with pytest.raises(MergeError, match="required parameter 'weight'.*models\\[1\\]"):
        resolve(ParamSpec("weight", "float", required=True), [model], "a.attn.b", 0, "'m'")


def test_parse_size_uses_decimal_units_like_mergekit() -> None:
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("12345") == 12345 and parse_size(77) == 77
    with pytest.raises(MergeError, match="shard size"):
        parse_size("lots")


def reference_ties(
    base: torch.Tensor, models: list[tuple[torch.Tensor, float, float]]
) -> torch.Tensor:
    """The precise semantics in float64: deltas taken in float32, then everything in float64."""
    total = torch.zeros(base.numel(), dtype=torch.float64)
    taus, weights = [], []
    for tensor, weight, density in models:
        delta = (tensor.float() - base.float()).reshape(-1)
        if density < 1:
            k = max(1, int(density * delta.numel()))
            keep = torch.sort(delta.abs(), descending=True, stable=True).indices[:k]
            mask = torch.zeros_like(delta, dtype=torch.bool)
            mask[keep] = True
            delta = delta * mask
        taus.append(delta.double() * weight)
        weights.append(weight)
        total += taus[-1]
    sign = torch.where(total >= 0, 1.0, -1.0).double()
    merged = sum(t * (torch.sign(t) == sign) for t in taus)
    divisor = sum(w * (torch.sign(t) == sign).double() for w, t in zip(weights, taus, strict=True))
    divisor[divisor == 0] = 1
    return (base.double().reshape(-1) + merged / divisor).reshape(base.shape)


def test_precise_engine_matches_a_float64_reference(
    tiny_family_bf16: dict[str, Path], write_recipe: Callable[[str], Recipe], tmp_path: Path
) -> None:
    fam = tiny_family_bf16
    recipe = write_recipe(
        f"""
models:
  - model: {fam["base"]}
  - model: {fam["ft_a"]}
    parameters: {{weight: 0.5, density: [0.2, 0.8]}}
  - model: {fam["ft_b"]}
    parameters: {{weight: 0.3, density: 0.5}}
merge_method: ties
base_model: {fam["base"]}
dtype: bfloat16
out_dtype: float32
"""
    )
    merge_recipe(recipe, tmp_path / "out", numerics="precise", progress=False)
    out = load_file(tmp_path / "out" / "model.safetensors")
    weights = {k: load_file(fam[k] / "model.safetensors") for k in ("base", "ft_a", "ft_b")}
    for name in ("model.layers.2.mlp.up_proj.weight", "model.embed_tokens.weight"):
        t = gradient_t(2 if "layers" in name else None, 4)
        models = [
            (weights["ft_a"][name], 0.5, 0.2 + 0.6 * t),
            (weights["ft_b"][name], 0.3, 0.5),
        ]
        expected = reference_ties(weights["base"][name], models)
        torch.testing.assert_close(out[name].double(), expected, rtol=2e-6, atol=1e-7)


def test_resolve_tensor_reads_per_model_values_for_task_vector_models() -> None:
    params = resolve_tensor(
        METHODS["ties"],
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        1.0,
        [[Scope({"weight": 0.3}, "models[1].parameters")]],
        [Scope({"density": 0.4, "normalize": False}, "parameters")],
        ["org/a"],
    )
    assert params.per_model == ({"weight": 0.3, "density": 0.4},)
    assert params.shared["normalize"] is False and params.shared["lambda"] == 1.0
