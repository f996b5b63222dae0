"""Running a recipe's merge: plan the output tensors, compute each one, stream it to disk."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pearl_bot.errors import MergeError
from pearl_bot.merge import compat, precise
from pearl_bot.merge.params import (
    Scope,
    TensorParams,
    gradient_t,
    layer_index,
    rename_layer,
    resolve_tensor,
)
from pearl_bot.merge.plan import MergePlan, TensorJob, build_plan
from pearl_bot.merge.precise import GtaOptions, TaskInput, dare_generator
from pearl_bot.merge.reader import read_all
from pearl_bot.merge.writer import (
    ShardWriter,
    copy_side_files,
    output_config,
    staging_folder,
    write_json,
)
from pearl_bot.recipe import Recipe

logger = logging.getLogger(__name__)

_GTA = {
    "ties": ("magnitude", True),
    "dare_ties": ("random", True),
    "task_arithmetic": (None, False),
}


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote: the folder, its files and a few numbers."""

    out_dir: Path
    files: list[str]
    tensor_count: int
    parameter_count: int
    seconds: float
    numerics: str
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people: tensors, parameters, seconds."""
        return (
            f"merged {self.tensor_count} tensors ({self.parameter_count:,} parameters) with "
            f"{self.method} [{self.numerics}] in {self.seconds:.1f} s into {self.out_dir}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the result."""
        return {
            "out_dir": str(self.out_dir),
            "files": list(self.files),
            "tensor_count": self.tensor_count,
            "parameter_count": self.parameter_count,
            "seconds": round(self.seconds, 3),
            "numerics": self.numerics,
            "method": self.method,
        }


def parse_size(value: str | int) -> int:
    """Parse a shard size: `5GB`, `500MB`, `1.5GB`, `2KB`, `123B` or a plain number of bytes.

    Units are decimal as in mergekit (5GB = 5e9 bytes); `GiB`/`MiB`/`KiB` are binary.
    """
    if isinstance(value, int):
        return _positive_size(value, value)
    text = value.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    units |= {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6}
    units |= {"G": 10**9, "T": 10**12, "B": 1}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number, factor = text[: -len(unit)], units[unit]
            break
    else:
        number, factor = text, 1
    try:
        size = int(float(number) * factor)
    except ValueError:
        raise MergeError(
            f"cannot read shard size {value!r}", hint="write it like 5GB, 500MB or 1.5GB"
        ) from None
    return _positive_size(size, value)


def _positive_size(size: int, value: object) -> int:
    if size <= 0:
        raise MergeError(f"shard size must be positive, got {value!r}", hint="e.g. 5GB")
    return size


def merge_recipe(
    recipe: Recipe,
    out_dir: Path,
    *,
    model_dirs: Mapping[str, Path] | None = None,
    numerics: str | None = None,
    device: str = "cpu",
    shard_size: int | None = None,
    allow_pickle: bool = False,
    progress: bool | None = None,
) -> MergeResult:
    """Merge `recipe` into the new folder `out_dir` and return what was written.

    `model_dirs` maps each ModelRef.key to a local folder (the Hub layer downloads them);
    local references default to their own path. Nothing is left at `out_dir` on failure.
    """
    started = time.perf_counter()
    numerics = numerics or recipe.build.numerics
    if numerics not in ("precise", "mergekit"):
        raise MergeError(f"unknown numeric mode {numerics!r}", hint="use precise or mergekit")
    compute = _device(device, numerics)
    size = shard_size or parse_size(recipe.build.shard_size)
    plan = build_plan(recipe, dict(model_dirs or {}), allow_pickle=allow_pickle)
    logger.info(
        "merging %d tensors of %d models with %s [%s]",
        len(plan.jobs),
        len(plan.folders),
        recipe.merge_method,
        numerics,
    )
    with staging_folder(Path(out_dir)) as tmp:
        files = _write_model(recipe, plan, tmp, size, numerics, compute, progress)
    seconds = time.perf_counter() - started
    result = MergeResult(
        out_dir=Path(out_dir).resolve(),
        files=sorted(files),
        tensor_count=len(plan.jobs),
        parameter_count=sum(j.out.nbytes // j.out.dtype.itemsize for j in plan.jobs),
        seconds=seconds,
        numerics=numerics,
        method=recipe.merge_method,
    )
    logger.info(result.summary())
    return result


def _device(name: str, numerics: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise MergeError(f"unknown device {name!r}", hint="use cpu or cuda")
    if not torch.cuda.is_available():
        raise MergeError(
            "--device cuda was asked for, but CUDA is not available on this machine",
            hint="run with --device cpu (the default)",
        )
    if numerics == "mergekit":
        raise MergeError(
            "--numerics mergekit reproduces mergekit's CPU sort order and runs on CPU only",
            hint="use --device cpu, or --numerics precise on CUDA",
        )
    return torch.device("cuda")


def _write_model(
    recipe: Recipe,
    plan: MergePlan,
    folder: Path,
    shard_size: int,
    numerics: str,
    device: torch.device,
    progress: bool | None,
) -> list[str]:
    writer = ShardWriter(folder, [j.out for j in plan.jobs], shard_size, numerics)
    jobs = {j.out.name: j for j in plan.jobs}
    show = sys.stderr.isatty() if progress is None else progress
    try:
        for name in tqdm(writer.order, desc="merge", unit="tensor", disable=not show):
            _merge_tensor(recipe, plan, jobs[name], writer, numerics, device)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    writer.write_index()
    write_json(
        folder / "config.json",
        output_config(plan.config, plan.out_dtype, plan.tied, plan.num_layers),
    )
    side = copy_side_files(folder, plan.tokenizer_folder, plan.config_folder)
    (folder / "mergekit_config.yml").write_text(recipe.mergekit_yaml(), encoding="utf-8")
    return [*writer.files, "config.json", *side, "mergekit_config.yml"]


def _merge_tensor(
    recipe: Recipe,
    plan: MergePlan,
    job: TensorJob,
    writer: ShardWriter,
    numerics: str,
    device: torch.device,
) -> None:
    name = job.out.name
    logger.debug("tensor %s %s", name, list(job.out.shape))
    writer.begin(name)

    def write(chunk: torch.Tensor) -> None:
        if chunk.is_floating_point() and not bool(torch.isfinite(chunk).all()):
            raise MergeError(
                f"the merged tensor {name!r} contains NaN or Inf values; refusing to write it",
                tensor=name,
                hint="check the inputs of this tensor and the recipe's weights",
            )
        writer.write(chunk)

    if job.copy:
        write(_copy_non_float(job))
        return
    params = _tensor_params(recipe, plan, job)
    if numerics == "precise":
        _run_precise(recipe, plan, job, params, write, device)
    else:
        write(_run_compat(recipe, plan, job, params).to(job.out.dtype))


def _tensor_params(recipe: Recipe, plan: MergePlan, job: TensorJob) -> TensorParams:
    out_layer = layer_index(job.out.name)
    t = gradient_t(out_layer, plan.num_layers_in_slice)
    return resolve_tensor(
        recipe.method,
        job.out.name,
        rename_layer(job.out.name, plan.layer_offset),
        t,
        [[Scope(m.parameters, f"{m.field}.parameters")] for m in plan.inputs],
        plan.shared_scopes,
        [m.ref.key for m in plan.inputs],
    )


def _copy_non_float(job: TensorJob) -> torch.Tensor:
    first = read_all(job.sources[0])
    for source in job.sources[1:]:
        if not torch.equal(first, read_all(source)):
            raise MergeError(
                f"non-float tensor {job.out.name!r} differs between {job.sources[0].origin} and "
                f"{source.origin}; integer buffers cannot be merged",
                tensor=job.out.name,
                hint="merge models whose integer buffers are identical",
            )
    return first


def _gta_options(recipe: Recipe, params: TensorParams) -> GtaOptions:
    sparsify, consensus = _GTA[recipe.merge_method]
    return GtaOptions(
        sparsify=sparsify,
        consensus=consensus,
        normalize=bool(params.shared["normalize"]),
        rescale=bool(params.shared["rescale"]),
        lambda_=float(params.shared["lambda"]),
    )


def _generators(recipe: Recipe, name: str) -> Callable[[int], torch.Generator]:
    return lambda k: dare_generator(recipe.build.seed, name, k)


def _run_precise(
    recipe: Recipe,
    plan: MergePlan,
    job: TensorJob,
    params: TensorParams,
    write: precise.Writer,
    device: torch.device,
) -> None:
    method, dtype = recipe.merge_method, job.out.dtype
    if method in _GTA:
        inputs = [
            TaskInput(src, float(p["weight"]), float(p.get("density", 1.0)))
            for src, p in zip(job.sources[1:], params.per_model, strict=True)
        ]
        options = _gta_options(recipe, params)
        gens = _generators(recipe, job.out.name)
        precise.merge_gta(job.sources[0], inputs, options, gens, dtype, write, device)
    elif method == "linear":
        weights = [float(p["weight"]) for p in params.per_model]
        normalize = bool(params.shared["normalize"])
        precise.merge_linear(job.sources, weights, normalize, dtype, write, device)
    else:
        t = float(params.shared["t"])
        precise.merge_slerp(job.sources[0], job.sources[1], t, dtype, write, device)


def _run_compat(
    recipe: Recipe, plan: MergePlan, job: TensorJob, params: TensorParams
) -> torch.Tensor:
    tensors = [read_all(s).to(plan.work_dtype) for s in job.sources]
    method = recipe.merge_method
    if method in _GTA:
        rest = params.per_model
        return compat.merge_gta(
            tensors[0],
            tensors[1:],
            [float(p["weight"]) for p in rest],
            [float(p.get("density", 1.0)) for p in rest],
            _gta_options(recipe, params),
            _generators(recipe, job.out.name),
            bool(params.shared["int8_mask"]),
        )
    if method == "linear":
        weights = [float(p["weight"]) for p in params.per_model]
        return compat.merge_linear(tensors, weights, bool(params.shared["normalize"]))
    return compat.merge_slerp(tensors[0], tensors[1], float(params.shared["t"]))
