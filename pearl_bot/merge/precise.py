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
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pearl_bot.merge.reader import TensorSource, numel

#: Elements per chunk (4 MiB of float32).
CHUNK = 1 << 20
_SAMPLE = 1 << 16

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
    """The exact trim of one task vector: keep every |delta| above `value`, and the first
    `ties` elements (in flat order) whose |delta| equals `value`."""

    value: float
    ties: int


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    """Flat [start, stop) ranges covering n elements."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def keep_count(density: float, n: int) -> int:
    """How many elements a trim at `density` keeps, as mergekit counts them."""
    return max(1, int(density * n))


def select_threshold(magnitudes: torch.Tensor, k: int) -> TrimCut:
    """The exact cut that keeps the k largest of `magnitudes` (flat, float32, >= 0).

    A strided sample brackets the k-th largest value; one counting pass then finds how many
    elements lie above the bracket and collects the few inside it, where the exact k-th value
    is read off a small sort. Falls back to `kthvalue` when the bracket misses (it does not
    happen for smooth distributions, but the answer is exact either way).
    """
    n = magnitudes.numel()
    cut = _bracket_select(magnitudes, k) if n > _SAMPLE else None
    if cut is None:
        value = float(torch.kthvalue(magnitudes.reshape(-1).cpu(), n - k + 1).values)
        cut = TrimCut(value=value, ties=k - int((magnitudes > value).sum()))
    return cut


def _bracket_select(magnitudes: torch.Tensor, k: int) -> TrimCut | None:
    flat = magnitudes.reshape(-1)
    n = flat.numel()
    sample = flat[:: n // _SAMPLE]
    size = sample.numel()
    rank = size - k / n * size  # ascending rank of the k-th largest within the sample
    margin = 4 * math.sqrt(size * (k / n) * (1 - k / n)) + 8
    high = _kth_smallest(sample, min(size, int(rank + margin) + 1))
    low = _kth_smallest(sample, max(1, int(rank - margin)))
    above = int((flat > high).sum())
    if above >= k:
        return None
    band = flat[flat.clamp(low, high) == flat]  # low <= x <= high in two passes
    if above + band.numel() < k:
        return None
    value = _kth_smallest(band, band.numel() - (k - above) + 1)
    return TrimCut(value=value, ties=k - above - int((band > value).sum()))


def _kth_smallest(values: torch.Tensor, k: int) -> float:
    return float(torch.kthvalue(values.cpu(), k).values)


class Trimmer:
    """Applies a TrimCut to consecutive chunks of one task vector, counting ties across them."""

    def __init__(self, cut: TrimCut) -> None:
        self.cut = cut
        self.ties_left = cut.ties

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        # hardshrink keeps exactly the elements with |delta| > value (value is a float32).
        kept = torch.nn.functional.hardshrink(delta, self.cut.value)
        if self.ties_left:
            tied = torch.nonzero(delta.abs() == self.cut.value).reshape(-1)[: self.ties_left]
            kept[tied] = delta[tied]
            self.ties_left -= int(tied.numel())
        return kept


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

    Every sum runs in model order from +0, as mergekit's reductions do, so that float32
    recipes differ from mergekit only where the trims differ. The agreeing weights are not
    summed per element: each element's sign pattern is coded in balanced ternary
    (sum_i 3^i sign(tau_i), exact in float32 for up to 15 models) and looked up in a table
    of the divisors of every pattern, summed in model order.
    """

    def __init__(self, like: torch.Tensor, table: torch.Tensor | None) -> None:
        self.table = table
        self.total = torch.zeros_like(like)
        self.pos = torch.zeros_like(like) if table is not None else None
        self.neg = torch.zeros_like(like) if table is not None else None
        self.code = torch.zeros_like(like) if table is not None else None
        self.models = 0

    def add(self, tau: torch.Tensor) -> None:
        """Add one weighted task vector chunk tau = weight * trimmed delta."""
        self.total += tau
        if self.pos is not None and self.neg is not None and self.code is not None:
            self.pos += torch.relu(tau)
            self.neg += tau.clamp(max=0)
            self.code.add_(tau.sign(), alpha=3**self.models)
        self.models += 1

    def merged(self, normalize: bool, weight_sum: float) -> torch.Tensor:
        """The merged delta: elect sign, disjoint merge, optional normalisation."""
        if self.table is None:
            divisor = weight_sum if abs(weight_sum) >= 1e-8 else 1.0
            return self.total / divisor if normalize else self.total
        assert self.pos is not None and self.neg is not None and self.code is not None
        positive = self.total >= 0
        merged = torch.where(positive, self.pos, self.neg)
        if not normalize:
            return merged
        offset = (3**self.models - 1) // 2
        index = self.code.add_(positive, alpha=3**self.models).to(torch.int64) + offset
        return merged / self.table[index]


def divisor_table(weights: Sequence[float], device: torch.device) -> torch.Tensor:
    """Divisors of every sign pattern: entry offset + code + s * 3^N holds the float32 sum,
    in model order, of the weights whose sign agrees with the elected sign s (0 -> 1)."""
    n = len(weights)
    w = torch.tensor(list(weights), dtype=torch.float32)
    entries = []
    for elected in (-1, 1):
        for pattern in itertools.product((-1, 0, 1), repeat=n):
            acc = torch.zeros((), dtype=torch.float32)
            for i in range(n):
                if pattern[n - 1 - i] == elected:
                    acc = acc + w[i]
            entries.append(1.0 if float(acc) == 0 else float(acc))
    return torch.tensor(entries, dtype=torch.float32, device=device)


#: Beyond this many models the divisor table (2 * 3^N entries) is not worth building.
MAX_TABLE_MODELS = 8


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
    if options.consensus and len(inputs) > MAX_TABLE_MODELS:
        raise NotImplementedError(f"more than {MAX_TABLE_MODELS} models in a sign election")
    prepare = _sparsifiers(base, inputs, options, generators, device)
    weights = [torch.tensor(i.weight, dtype=torch.float32, device=device) for i in inputs]
    table = divisor_table([i.weight for i in inputs], device) if options.consensus else None
    weight_sum = float(torch.stack(weights).sum()) if inputs else 0.0
    sparsify = prepare()
    for start, stop in chunks(numel(base)):
        b = base.read(start, stop).to(device).float()
        acc = Accumulator(b, table)
        for i, item in enumerate(inputs):
            delta = item.source.read(start, stop).to(device).float().sub_(b)
            acc.add(sparsify[i](delta).mul_(weights[i]))
        merged = acc.merged(options.normalize, weight_sum)
        if options.lambda_ != 1:
            merged = merged * options.lambda_
        write(merged.add_(b).to(out_dtype).cpu())


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
        cuts = _trim_cuts(base, inputs, active, device)
        return lambda: [Trimmer(c) if c is not None else plain[k] for k, c in enumerate(cuts)]
    if options.sparsify == "random" and any(active):
        scales = _dare_scales(base, inputs, active, options, generators, device)
        return lambda: [
            Dropper(generators(k), inputs[k].density, scales[k]) if active[k] else plain[k]
            for k in range(len(inputs))
        ]
    return lambda: list(plain)


def _trim_cuts(
    base: TensorSource, inputs: Sequence[TaskInput], active: list[bool], device: torch.device
) -> list[TrimCut | None]:
    """The trim cut of each active task vector, one whole tensor at a time."""
    b = base.read().to(device).float()
    cuts: list[TrimCut | None] = []
    for item, on in zip(inputs, active, strict=True):
        if not on:
            cuts.append(None)
            continue
        magnitudes = item.source.read().to(device).float().sub_(b).abs_()
        cuts.append(select_threshold(magnitudes, keep_count(item.density, b.numel())))
        del magnitudes
    return cuts


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
    for start, stop in chunks(numel(base)):
        b = base.read(start, stop).to(device).float()
        for k, item in enumerate(inputs):
            if active[k]:
                delta = item.source.read(start, stop).to(device).float().sub_(b)
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
