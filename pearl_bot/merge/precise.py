"""The `precise` numeric mode: float32 arithmetic, exact trims, streamed in flat chunks.

Every input is read in flat element ranges of `CHUNK` elements and widened to float32; the
output is cast once to the output dtype. The trim keeps exactly k = max(1, int(density * n))
elements of each task vector: every element whose |delta| is above the k-th largest magnitude,
then the elements equal to it in increasing flat index until k are kept. The threshold is found
in O(n) from two histograms of the float32 bit patterns of |delta| (high 16 bits, then the low
16 bits inside the one high bin that holds the k-th element), so the result does not depend on a
sort implementation, a thread count or a device. Memory is a few chunks per input model,
whatever the tensor size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pearl_bot.merge.reader import TensorSource, numel

#: Elements per chunk (16 MiB of float32).
CHUNK = 1 << 22
_HIGH_BINS = 1 << 15  # |x| has a clear sign bit, so its high half-word is below 2**15
_LOW_BINS = 1 << 16

Writer = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class TaskInput:
    """One non-base model of a task-arithmetic merge, for one tensor."""

    source: TensorSource
    weight: float
    density: float


@dataclass(frozen=True)
class GtaOptions:
    """How a task-arithmetic family method combines task vectors."""

    sparsify: str | None  # "magnitude" (TIES), "random" (DARE) or None
    consensus: bool
    normalize: bool
    rescale: bool
    lambda_: float


@dataclass(frozen=True)
class TrimCut:
    """The exact trim of one task vector: keep |delta| bits above `key`, and the first `ties`
    elements (in flat order) whose |delta| bits equal `key`."""

    key: int
    ties: int


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    """Flat [start, stop) ranges covering n elements."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def magnitude_keys(delta: torch.Tensor) -> torch.Tensor:
    """The int32 bit patterns of |delta| (float32): ordered exactly like the magnitudes."""
    return delta.abs().view(torch.int32)


def keep_count(density: float, n: int) -> int:
    """How many elements a trim at `density` keeps, as mergekit counts them."""
    return max(1, int(density * n))


def _kth_bin(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest element (1-based) and the count in higher bins."""
    above = torch.cumsum(hist.flip(0), 0).flip(0) - hist  # elements in strictly higher bins
    candidates = torch.nonzero((above < k) & (above + hist >= k)).reshape(-1)
    index = int(candidates[-1])
    return index, int(above[index])


def find_cuts(
    deltas: Callable[[int, int], list[torch.Tensor]], n: int, ks: list[int]
) -> list[TrimCut]:
    """Exact trim cuts of several task vectors, from two histogram passes over their chunks.

    `deltas(start, stop)` returns one float32 chunk per task vector; `ks[i]` is how many
    elements task vector i keeps.
    """
    high = [torch.zeros(_HIGH_BINS, dtype=torch.int64) for _ in ks]
    for start, stop in chunks(n):
        for i, delta in enumerate(deltas(start, stop)):
            high[i] += torch.bincount(magnitude_keys(delta) >> 16, minlength=_HIGH_BINS).cpu()
    bins = [_kth_bin(h, k) for h, k in zip(high, ks, strict=True)]
    low = [torch.zeros(_LOW_BINS, dtype=torch.int64) for _ in ks]
    for start, stop in chunks(n):
        for i, delta in enumerate(deltas(start, stop)):
            keys = magnitude_keys(delta)
            inside = keys[(keys >> 16) == bins[i][0]] & 0xFFFF
            low[i] += torch.bincount(inside, minlength=_LOW_BINS).cpu()
    cuts = []
    for (hi_bin, above_hi), lo_hist, k in zip(bins, low, ks, strict=True):
        lo_bin, above_lo = _kth_bin(lo_hist, k - above_hi)
        cuts.append(TrimCut(key=(hi_bin << 16) | lo_bin, ties=k - above_hi - above_lo))
    return cuts


class Trimmer:
    """Applies a TrimCut to consecutive chunks of one task vector, counting ties across them."""

    def __init__(self, cut: TrimCut) -> None:
        self.cut = cut
        self.ties_left = cut.ties

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        keys = magnitude_keys(delta)
        keep = keys > self.cut.key
        if self.ties_left:
            tied = torch.nonzero(keys == self.cut.key).reshape(-1)[: self.ties_left]
            keep[tied] = True
            self.ties_left -= int(tied.numel())
        return delta * keep.to(delta.dtype)


def dare_generator(seed: int, tensor_name: str, model_index: int) -> torch.Generator:
    """The DARE drop generator of one model and tensor, seeded from the recipe seed."""
    digest = hashlib.sha256(f"{seed}\0{tensor_name}\0{model_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Dropper:
    """DARE's random drop on consecutive chunks: keep each element with probability density."""

    def __init__(self, generator: torch.Generator, density: float, scale: float = 1.0) -> None:
        self.generator = generator
        self.density = density
        self.scale = scale

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        draw = torch.rand(delta.numel(), generator=self.generator).to(delta.device)
        kept = delta * (draw < self.density).to(delta.dtype)
        return kept * self.scale if self.scale != 1.0 else kept


class Accumulator:
    """Running sums of one chunk for the sign election and the disjoint merge.

    The election sum and the agreeing sums are accumulated in model order, as mergekit
    does, so that float32 recipes differ from mergekit only where the trims differ.
    """

    def __init__(self, like: torch.Tensor, consensus: bool) -> None:
        self.consensus = consensus
        self.total = torch.zeros_like(like)
        self.weights = torch.zeros_like(like) if not consensus else None
        self.pos = torch.zeros_like(like) if consensus else None
        self.neg = torch.zeros_like(like) if consensus else None
        self.wpos = torch.zeros_like(like) if consensus else None
        self.wneg = torch.zeros_like(like) if consensus else None
        self.weight_sum = torch.zeros((), dtype=like.dtype, device=like.device)

    def add(self, tau: torch.Tensor, weight: torch.Tensor) -> None:
        """Add one weighted task vector chunk tau = weight * trimmed delta."""
        self.total += tau
        self.weight_sum = self.weight_sum + weight
        if not self.consensus:
            return
        assert self.pos is not None and self.neg is not None
        assert self.wpos is not None and self.wneg is not None
        positive, negative = tau > 0, tau < 0
        self.pos += tau * positive
        self.neg += tau * negative
        self.wpos += weight * positive
        self.wneg += weight * negative

    def merged(self, normalize: bool) -> torch.Tensor:
        """The merged delta: elect sign, disjoint merge, optional normalisation."""
        if not self.consensus:
            divisor = self.weight_sum.expand_as(self.total).clone()
            divisor[divisor.abs() < 1e-8] = 1
            return self.total / divisor if normalize else self.total
        assert self.pos is not None and self.neg is not None
        assert self.wpos is not None and self.wneg is not None
        sign = self.total >= 0
        merged = torch.where(sign, self.pos, self.neg)
        if not normalize:
            return merged
        divisor = torch.where(sign, self.wpos, self.wneg)
        divisor[divisor == 0] = 1
        return merged / divisor


def merge_gta(
    base: TensorSource,
    inputs: Sequence[TaskInput],
    options: GtaOptions,
    generators: Callable[[int], torch.Generator],
    out_dtype: torch.dtype,
    write: Writer,
    device: torch.device,
) -> None:
    """TIES, DARE-TIES and task arithmetic in float32, streamed chunk by chunk into `write`."""
    n = numel(base)
    prepare = _sparsifiers(base, inputs, options, generators, device)
    weights = [torch.tensor(i.weight, dtype=torch.float32, device=device) for i in inputs]
    sparsify = prepare()
    for start, stop in chunks(n):
        b = base.read(start, stop).to(device).float()
        acc = Accumulator(b, options.consensus)
        for i, item in enumerate(inputs):
            delta = sparsify[i](item.source.read(start, stop).to(device).float() - b)
            acc.add(weights[i] * delta, weights[i])
        merged = acc.merged(options.normalize)
        if options.lambda_ != 1:
            merged = merged * options.lambda_
        write((b + merged).to(out_dtype).cpu())


def _read_deltas(
    base: TensorSource, inputs: Sequence[TaskInput], device: torch.device
) -> Callable[[int, int], list[torch.Tensor]]:
    def deltas(start: int, stop: int) -> list[torch.Tensor]:
        b = base.read(start, stop).to(device).float()
        return [i.source.read(start, stop).to(device).float() - b for i in inputs]

    return deltas


def _identity(delta: torch.Tensor) -> torch.Tensor:
    return delta


def _zero(delta: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(delta)


def _sparsifiers(
    base: TensorSource,
    inputs: Sequence[TaskInput],
    options: GtaOptions,
    generators: Callable[[int], torch.Generator],
    device: torch.device,
) -> Callable[[], list[Callable[[torch.Tensor], torch.Tensor]]]:
    """A factory of per-model chunk transforms; it runs any whole-tensor pre-pass once."""
    n = numel(base)
    active = [options.sparsify is not None and 0 < i.density < 1 and n > 0 for i in inputs]
    plain = [_zero if options.sparsify and i.density <= 0 else _identity for i in inputs]
    if options.sparsify == "magnitude" and any(active):
        picked = [k for k, on in enumerate(active) if on]
        read = _read_deltas(base, [inputs[k] for k in picked], device)
        cuts = find_cuts(read, n, [keep_count(inputs[k].density, n) for k in picked])
        by_model = dict(zip(picked, cuts, strict=True))
        return lambda: [
            Trimmer(by_model[k]) if k in by_model else plain[k] for k in range(len(inputs))
        ]
    if options.sparsify == "random" and any(active):
        scales = _dare_scales(base, inputs, active, options, generators, device)
        return lambda: [
            Dropper(generators(k), inputs[k].density, scales[k]) if active[k] else plain[k]
            for k in range(len(inputs))
        ]
    return lambda: list(plain)


def _dare_scales(
    base: TensorSource,
    inputs: Sequence[TaskInput],
    active: list[bool],
    options: GtaOptions,
    generators: Callable[[int], torch.Generator],
    device: torch.device,
) -> list[float]:
    """L1 rescale factors ||delta||_1 / ||dropped delta||_1 (1 when rescale is off or tiny)."""
    if not options.rescale:
        return [1.0] * len(inputs)
    droppers = [Dropper(generators(k), i.density) for k, i in enumerate(inputs)]
    before = [0.0] * len(inputs)
    after = [0.0] * len(inputs)
    read = _read_deltas(base, inputs, device)
    for start, stop in chunks(numel(base)):
        for k, delta in enumerate(read(start, stop)):
            if active[k]:
                before[k] += float(delta.abs().sum(dtype=torch.float64))
                after[k] += float(droppers[k](delta).abs().sum(dtype=torch.float64))
    return [
        b / a if active[k] and b >= 1e-7 and a >= 1e-7 else 1.0
        for k, (b, a) in enumerate(zip(before, after, strict=True))
    ]


def merge_linear(
    sources: Sequence[TensorSource],
    weights: Sequence[float],
    normalize: bool,
    out_dtype: torch.dtype,
    write: Writer,
    device: torch.device,
) -> None:
    """Weighted average sum_i w_i x_i / sum_i w_i in float32, streamed."""
    coeffs = [torch.tensor(w, dtype=torch.float32, device=device) for w in weights]
    denominator = torch.stack(coeffs).sum()
    for start, stop in chunks(numel(sources[0])):
        acc = torch.zeros(stop - start, dtype=torch.float32, device=device)
        for source, coeff in zip(sources, coeffs, strict=True):
            acc.addcmul_(source.read(start, stop).to(device).float(), coeff)
        if normalize:
            acc /= denominator
        write(acc.to(out_dtype).cpu())


def slerp_coefficients(dot: float, t: float, threshold: float = 0.9995) -> tuple[float, float]:
    """Coefficients (c_a, c_b) of slerp between unit vectors with cosine `dot`, at t."""
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > threshold:
        return 1 - t, t
    theta = math.acos(dot)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def merge_slerp(
    a: TensorSource,
    b: TensorSource,
    t: float,
    out_dtype: torch.dtype,
    write: Writer,
    device: torch.device,
) -> None:
    """Spherical interpolation of the flattened tensors (norms and dot in float64), streamed."""
    n = numel(a)
    sums = torch.zeros(3, dtype=torch.float64)
    for start, stop in chunks(n):
        x = a.read(start, stop).to(device).double()
        y = b.read(start, stop).to(device).double()
        sums += torch.stack([(x * x).sum(), (y * y).sum(), (x * y).sum()]).cpu()
    norm_a, norm_b = (math.sqrt(float(s)) for s in sums[:2])
    norm_a = norm_a if norm_a > 1e-8 else 1.0
    norm_b = norm_b if norm_b > 1e-8 else 1.0
    ca, cb = slerp_coefficients(float(sums[2]) / (norm_a * norm_b), t)
    coeff_a = torch.tensor(ca, dtype=torch.float32, device=device)
    coeff_b = torch.tensor(cb, dtype=torch.float32, device=device)
    for start, stop in chunks(n):
        x = a.read(start, stop).to(device).float()
        y = b.read(start, stop).to(device).float()
        write((coeff_a * x + coeff_b * y).to(out_dtype).cpu())
