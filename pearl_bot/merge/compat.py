"""The `mergekit` numeric mode: mergekit 0.1.5's working dtype and operation order, on CPU.

Whole tensors are processed in the recipe's working dtype (`dtype`, else the promoted storage
dtype). The trim takes the first k indices of a descending argsort of |delta|. mergekit sorts
one model at a time on a float32 key; here every model's key of a tensor is sorted in one
batched argsort (its rows run in parallel) on the integer bit pattern of |delta|, which orders
exactly like the magnitude and gives the same permutation. Where the C helper of
`pearl_bot.merge.topk` builds, integer keys skip the sort: it replays only the introsort
partitions that hold position k, which yields the same first-k set in O(n). Linear and SLERP
upcast to float32 like mergekit, including SLERP's chunked norms.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from pearl_bot.merge import topk
from pearl_bot.merge.precise import GtaOptions, keep_count

#: mergekit's SLERP bounds its float32 scratch to chunks of this many elements.
SLERP_CHUNK = 1024 * 1024
_MAX_TABLE_MODELS = 8
_INT_KEYS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def sort_keys(magnitudes: torch.Tensor) -> torch.Tensor:
    """Integer keys ordered like the (non-negative) magnitudes; float32 for other dtypes, and
    whenever this torch build would not sort the integer key the way it sorts mergekit's."""
    key_dtype = _INT_KEYS.get(magnitudes.dtype)
    if key_dtype is None or not sorts_like_float32(key_dtype):
        return magnitudes.float()
    return magnitudes.view(key_dtype)


@functools.cache
def sorts_like_float32(key_dtype: torch.dtype) -> bool:
    """Whether torch's descending argsort orders tied `key_dtype` keys as it orders float32.

    On the CPU both go through libstdc++'s std::sort, so ties fall the same way and the faster
    integer key gives mergekit's exact tie order. Builds with x86-simd-sort send some dtypes
    (int32, float32) through a vectorised sort instead, whose tie order differs; there the
    engine sorts float32 keys like mergekit does. Probed once on a tie-heavy array.
    """
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 50, (2, 1 << 17), generator=generator).to(key_dtype)
    by_int = torch.argsort(probe, dim=1, descending=True)
    by_float = torch.argsort(probe.float(), dim=1, descending=True)
    return bool(torch.equal(by_int, by_float))


def trim_batched(deltas: torch.Tensor, densities: Sequence[float], rows: int) -> None:
    """Magnitude-trim each row of `deltas` ([N, ...]) in place, `rows` models per argsort."""
    flat = deltas.reshape(len(densities), -1)
    n = flat.shape[1]
    for k, density in enumerate(densities):
        if density <= 0 or n == 0:
            flat[k].zero_()
    todo = [k for k, d in enumerate(densities) if 0 < d < 1 and n > 0]
    for group in (todo[i : i + rows] for i in range(0, len(todo), rows)):
        keys = sort_keys(flat[group].abs())
        counts = [keep_count(densities[k], n) for k in group]
        masks = _introsort_masks(keys, counts)
        missing = [row for row, mask in enumerate(masks) if mask is None]
        if missing:
            order = torch.argsort(keys[missing], dim=1, descending=True)
            for i, row in enumerate(missing):
                masks[row] = first_k_mask(keys[row], order[i], counts[row])
            del order
        for row, k in enumerate(group):
            kept = masks[row]
            assert kept is not None
            # Multiplying (not masked_fill) keeps mergekit's -0.0 for trimmed negative deltas.
            flat[k].mul_(kept.to(flat.dtype))
        del keys, masks


def _introsort_masks(keys: torch.Tensor, counts: list[int]) -> list[torch.Tensor | None]:
    """Each row's first-k mask from the C introsort replica (rows in threads, as ctypes frees
    the GIL); None for rows it cannot answer: float keys, no compiler, a heapsort on the path."""
    if keys.is_floating_point() or not topk.available():
        return [None] * len(counts)
    with ThreadPoolExecutor(max_workers=min(len(counts), os.cpu_count() or 1)) as pool:
        return list(pool.map(topk.topk_mask, keys, counts))


def first_k_mask(keys: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the elements at `order[:k]`, `order` a descending argsort of `keys`.

    For integer keys the elements above the k-th key are found by one comparison, and only the
    ones equal to it (the tie positions the sort decided) are scattered, which is much cheaper
    than scattering all k. Float keys scatter all k, as their NaNs sort first but compare false.
    """
    if keys.is_floating_point():
        mask = torch.zeros(keys.shape, dtype=torch.bool)
        mask[order[:k]] = True
        return mask
    mask = keys > keys[order[k - 1]]
    above = int(mask.sum())
    mask[order[above:k]] = True
    return mask


def drop_random(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator
) -> torch.Tensor:
    """DARE's Bernoulli drop in the working dtype (float16 drawn in float32, as on CPU)."""
    if density >= 1:
        return delta
    work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    work_delta = delta.to(work)
    kept = work_delta * mask
    if rescale:
        before, after = work_delta.abs().sum(), kept.abs().sum()
        if not (before < 1e-7 or after < 1e-7):
            kept = kept * (before / after)
    return kept.to(delta.dtype)


def merge_gta(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    options: GtaOptions,
    generators: Callable[[int], torch.Generator],
    int8_mask: bool,
) -> torch.Tensor:
    """TIES, DARE-TIES and task arithmetic exactly as mergekit 0.1.5 computes them."""
    if not tensors:
        return base
    deltas = base.new_empty((len(tensors), *base.shape))
    for k, tensor in enumerate(tensors):
        torch.sub(tensor, base, out=deltas[k])
    if options.sparsify == "magnitude":
        trim_batched(deltas, densities, max(1, torch.get_num_threads()))
    elif options.sparsify == "random":
        for k, density in enumerate(densities):
            deltas[k] = drop_random(deltas[k], density, options.rescale, generators(k))
    w = torch.tensor(list(weights), dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    mixed, divisor = _combine(deltas, w, options.consensus, int8_mask, base.dtype)
    if options.normalize:
        mixed /= divisor
    if options.lambda_ != 1:
        mixed *= options.lambda_
    return (base + mixed).to(base.dtype)


def _combine(
    deltas: torch.Tensor,
    w: torch.Tensor,
    consensus: bool,
    int8_mask: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elect sign + disjoint sum (consensus) or a plain sum, and the matching divisor."""
    if not consensus:
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
        return deltas.sum(dim=0), divisor
    mask_dtype = torch.int8 if int8_mask else dtype
    signs = deltas.sign().to(mask_dtype)
    majority = (deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    agree = signs == majority
    del signs
    mixed = (deltas * agree).sum(dim=0)
    return mixed, agreement_divisor(w, agree)


def agreement_divisor(w: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """sum_i agree_i * w_i (0 replaced by 1), looked up by agreement pattern for N <= 8.

    The table entries are computed by the same dtype and reduction as the direct sum, so the
    values are the same bits; the lookup replaces an [N, n] multiply and sum.
    """
    count = agree.shape[0]
    if count > _MAX_TABLE_MODELS:
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
        return divisor
    bits = torch.arange(count, dtype=torch.uint8).reshape(-1, *([1] * (agree.dim() - 1)))
    code = (agree.view(torch.uint8) << bits).sum(dim=0, dtype=torch.uint8)
    patterns = (torch.arange(2**count) >> torch.arange(count).unsqueeze(1)) & 1
    table = (w.reshape(count, 1) * patterns.bool()).sum(dim=0)
    table[table == 0] = 1
    return table[code.reshape(-1).int()].reshape(code.shape)


def merge_linear(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
) -> torch.Tensor:
    """Weighted average accumulated in float32 (float64 for float64 inputs)."""
    first = tensors[0]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    coeffs = torch.tensor([list(weights)], dtype=acc_dtype)
    shape = (1,) * first.dim()
    result = torch.zeros_like(first, dtype=acc_dtype)
    for tensor, coeff in zip(tensors, coeffs.unbind(1), strict=True):
        result.addcmul_(tensor, coeff.reshape(shape))
    if normalize:
        result.div_(coeffs.sum(dim=1).reshape(shape))
    return result.to(first.dtype)


def merge_slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """SLERP of the flattened tensors with mergekit's chunked float32 norms and dot."""
    acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x_all, y_all = a.reshape(1, -1), b.reshape(1, -1)
    tt = torch.tensor([[t]], dtype=acc_dtype)
    if not x_all.shape[1]:
        return ((1 - tt) * x_all + tt * y_all).reshape(a.shape).to(a.dtype)
    spans = [(s, s + SLERP_CHUNK) for s in range(0, x_all.shape[1], SLERP_CHUNK)]
    norm_a = _chunked_norm(x_all, spans, acc_dtype)
    norm_b = _chunked_norm(y_all, spans, acc_dtype)
    dots = [
        ((x_all[:, s:e].to(acc_dtype) / norm_a) * (y_all[:, s:e].to(acc_dtype) / norm_b)).sum(
            dim=1, keepdim=True
        )
        for s, e in spans
    ]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > 0.9995
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(x_all)
    for s, e in spans:
        x, y = x_all[:, s:e].to(acc_dtype), y_all[:, s:e].to(acc_dtype)
        result[:, s:e] = coef_a * x + coef_b * y
    return result.reshape(a.shape)


def _chunked_norm(
    x: torch.Tensor, spans: list[tuple[int, int]], dtype: torch.dtype
) -> torch.Tensor:
    parts = [torch.linalg.vector_norm(x[:, s:e].to(dtype), dim=1, keepdim=True) for s, e in spans]
    norm = torch.linalg.vector_norm(torch.stack(parts), dim=0)
    return torch.where(norm > 1e-8, norm, 1)
