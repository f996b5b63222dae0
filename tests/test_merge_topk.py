"""The C introsort replica against torch's own descending argsort, and its fallback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pearl_bot.merge import topk
from pearl_bot.merge.compat import trim_batched

needs_helper = pytest.mark.skipif(not topk.available(), reason="no C compiler for the helper")

Builder = Callable[[int, torch.Generator], torch.Tensor]
BUILDERS: dict[str, Builder] = {
    "range2": lambda n, g: torch.randint(0, 2, (n,), generator=g),
    "range3": lambda n, g: torch.randint(0, 3, (n,), generator=g),
    "range50": lambda n, g: torch.randint(0, 50, (n,), generator=g),
    "all_equal": lambda n, g: torch.full((n,), 7),
    "sorted": lambda n, g: torch.arange(n) % 30000 // 3,
    "reverse": lambda n, g: (n - torch.arange(n)) % 30000 // 3,
    "bf16_delta": lambda n, g: bf16_keys(torch.randn(n, generator=g) * 0.002).long(),
    "wide": lambda n, g: torch.randint(-30000, 30000, (n,), generator=g),
}


def bf16_keys(values: torch.Tensor) -> torch.Tensor:
    """int16 keys of |values| in bfloat16, as the trim builds them."""
    return values.bfloat16().view(torch.int16) & 0x7FFF


def argsort_mask(keys: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(keys.numel(), dtype=torch.bool)
    mask[torch.argsort(keys, descending=True)[:k]] = True
    return mask


def counts_for(n: int) -> list[int]:
    near = [1, 2, n - 1, n, n // 2, int(0.3 * n), 15, 16, 17, 31, 32, 33, 48, 49]
    return sorted({k for k in near if 1 <= k <= n})


def check(keys: torch.Tensor, k: int) -> bool:
    """Whether the helper matches argsort; False where it asked for the fallback."""
    mask = topk.topk_mask(keys, k)
    if mask is None:
        return False
    assert torch.equal(mask, argsort_mask(keys, k)), (keys.dtype, keys.numel(), k)
    return True


@needs_helper
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_first_k_matches_argsort_small(name: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(len(name))
    for n in [*range(1, 41), 1000, 1017]:
        for k in counts_for(n):
            assert check(BUILDERS[name](n, generator).to(dtype), k)


@needs_helper
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("n", [100_000, 1_000_003])
def test_first_k_matches_argsort_large(n: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(n)
    answered = 0
    for name in ["range2", "range50", "all_equal", "sorted", "reverse", "bf16_delta"]:
        keys = BUILDERS[name](n, generator).to(dtype)
        for k in [1, 17, n // 3, n - 1]:
            answered += check(keys, k)
    assert answered >= 20


@needs_helper
def test_heapsort_path_falls_back() -> None:
    # int16 wrap-around of a descending ramp drives introsort to its depth limit on this path.
    keys = ((100_000 - torch.arange(100_000)) // 3).to(torch.int16)
    assert topk.topk_mask(keys, 17) is None


def trim_with(monkeypatch: pytest.MonkeyPatch, compiler: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    deltas = (torch.randn(3, 257, 31, generator=generator) * 0.002).bfloat16()
    deltas[1, :100] = deltas[1, 0]
    monkeypatch.setattr(topk, "COMPILER", compiler)
    topk.load_library.cache_clear()
    try:
        trim_batched(deltas, [0.3, 0.5, 0.9], rows=2)
    finally:
        topk.load_library.cache_clear()
    return deltas


def test_fallback_without_compiler_gives_same_trim(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compiler = topk.COMPILER
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fallback = trim_with(monkeypatch, "pearl-bot-no-such-cc")
    assert not list(tmp_path.rglob("*.so"))
    helped = trim_with(monkeypatch, compiler)
    if not topk.available():
        pytest.skip("no C compiler for the helper")
    assert list(tmp_path.rglob("*.so"))
    assert torch.equal(helped.view(torch.int16), fallback.view(torch.int16))
