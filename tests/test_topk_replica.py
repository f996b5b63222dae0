"""The introsort replica selects exactly the set torch's descending argsort puts first."""

from __future__ import annotations

import random

import pytest
import torch

from pearl_bot.merge import introsort


def _expected(keys: torch.Tensor, counts: list[int]) -> torch.Tensor:
    order = torch.argsort(keys, dim=1, descending=True)
    mask = torch.zeros(keys.shape, dtype=torch.bool)
    for row, k in enumerate(counts):
        mask[row, order[row, :k]] = True
    return mask


def _keys(rng: random.Random, rows: int, n: int) -> torch.Tensor:
    kind = rng.randrange(6)
    if kind == 3:
        return torch.full((rows, n), 7, dtype=torch.int16)
    if kind >= 4:  # bf16 task-vector magnitudes: many exactly equal keys
        delta = (torch.randn(rows, n) * 0.002).to(torch.bfloat16)
        return delta.view(torch.int16) & 0x7FFF
    keys = torch.randint(0, rng.choice([1, 2, 3, 50, 1000]), (rows, n))
    if kind == 1:
        keys = keys.sort(dim=1).values
    elif kind == 2:
        keys = keys.sort(dim=1, descending=True).values
    return keys.to(rng.choice([torch.int16, torch.int32]))


def _counts(rng: random.Random, rows: int, n: int) -> list[int]:
    choices = [1, n - 1, n, max(1, n // 2), rng.randint(1, n)]
    choices += [b for b in (15, 16, 17, 32, 33, 48) if b <= n]
    return [rng.choice(choices) for _ in range(rows)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("sizes", "cases"),
    [((1, 20), 300), ((17, 40), 300), ((900, 1100), 60), ((90_000, 110_000), 3)],
)
def test_replica_matches_argsort(threads: int, sizes: tuple[int, int], cases: int) -> None:
    rng = random.Random(sizes[0] * 10 + threads)
    torch.manual_seed(sizes[1] + threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(cases):
            rows, n = rng.randint(1, 3), rng.randint(*sizes)
            keys, counts = _keys(rng, rows, n), _counts(rng, rows, n)
            got = introsort.topk_like_argsort(keys, counts)
            assert torch.equal(got, _expected(keys, counts)), (n, counts, keys.dtype)
    finally:
        torch.set_num_threads(before)


def test_replica_matches_argsort_on_a_million_bf16_magnitudes() -> None:
    torch.manual_seed(0)
    keys = (torch.randn(2, 1_000_000) * 0.002).to(torch.bfloat16).view(torch.int16) & 0x7FFF
    counts = [500_000, 123_457]
    assert torch.equal(introsort.topk_like_argsort(keys, counts), _expected(keys, counts))


def test_depth_limit_falls_back_to_argsort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(introsort, "depth_limit", lambda size: 1)
    fallbacks = introsort.stats.heapsort_fallbacks
    keys = torch.randint(0, 5, (2, 500), dtype=torch.int16)
    assert torch.equal(introsort.topk_like_argsort(keys, [250, 7]), _expected(keys, [250, 7]))
    assert introsort.stats.heapsort_fallbacks == fallbacks + 2
