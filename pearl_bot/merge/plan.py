"""Planning a merge: which tensors come out, from which inputs, in which dtype.

The plan is made from the file headers alone, before any arithmetic, so that every bad input
(a missing folder or tensor, a shape mismatch, a vocabulary that cannot be aligned, a corrupt
header) fails before the output folder is created.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pearl_bot.errors import MergeError
from pearl_bot.merge.params import Scope, layer_index, rename_layer
from pearl_bot.merge.reader import ModelFolder, PaddedRows, TensorSource
from pearl_bot.merge.writer import OutputTensor
from pearl_bot.recipe import InputModel, ModelRef, Recipe

logger = logging.getLogger(__name__)

LM_HEAD = "lm_head.weight"
EMBED = "model.embed_tokens.weight"
_VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class TensorJob:
    """One output tensor and its inputs, in merge order (the base first when there is one)."""

    out: OutputTensor
    sources: list[TensorSource]
    copy: bool = False


@dataclass(frozen=True)
class MergePlan:
    """Everything the engine needs to compute and write the output model."""

    folders: dict[str, ModelFolder]
    #: The models whose per-model parameters are read, aligned with TensorParams.per_model.
    inputs: list[InputModel]
    shared_scopes: list[Scope]
    jobs: list[TensorJob]
    work_dtype: torch.dtype
    out_dtype: torch.dtype
    config: dict[str, Any]
    config_folder: Path
    tokenizer_folder: Path
    tied: bool
    num_layers: int | None
    num_layers_in_slice: int
    layer_offset: int


def build_plan(recipe: Recipe, model_dirs: Mapping[str, Path], *, allow_pickle: bool) -> MergePlan:
    """Open every input's headers and plan the output tensors of `recipe`."""
    folders = {
        ref.key: ModelFolder(ref.key, _folder_of(ref, model_dirs), allow_pickle=allow_pickle)
        for ref in recipe.upstreams()
    }
    order = _source_order(recipe)
    donor = folders[order[0].key]
    start, stop = _layer_span(recipe, donor)
    work, out = _dtypes(recipe, [folders[r.key] for r in order])
    jobs = _jobs(recipe, folders, order, donor, start, stop, out)
    tied = not any(j.out.name == LM_HEAD for j in jobs)
    tokenizer = _tokenizer_folder(recipe, folders, donor)
    return MergePlan(
        folders=folders,
        inputs=_param_inputs(recipe),
        shared_scopes=_shared_scopes(recipe),
        jobs=jobs,
        work_dtype=work,
        out_dtype=out,
        config=dict(donor.config()),
        config_folder=donor.folder,
        tokenizer_folder=tokenizer,
        tied=tied,
        num_layers=stop - start if recipe.data.slices is not None else None,
        num_layers_in_slice=stop - start,
        layer_offset=start,
    )


def _folder_of(ref: ModelRef, model_dirs: Mapping[str, Path]) -> Path:
    folder = model_dirs.get(ref.key) or ref.path
    if folder is None:
        raise MergeError(
            f"Hub model {ref.key!r} has no local folder",
            hint="download it first (`pearl-bot merge` does; library callers pass model_dirs)",
        )
    return Path(folder)


def _source_order(recipe: Recipe) -> list[ModelRef]:
    """Inputs in merge order: the base, then the other listed models in recipe order."""
    if recipe.method.task_vectors or recipe.merge_method == "slerp":
        assert recipe.base_model is not None
        return [recipe.base_model, *(m.ref for m in recipe.non_base_models())]
    refs = [m.ref for m in recipe.models]
    if recipe.base_model in refs:
        refs.remove(recipe.base_model)
        refs.insert(0, recipe.base_model)
    return refs


def _param_inputs(recipe: Recipe) -> list[InputModel]:
    if recipe.method.task_vectors:
        return recipe.non_base_models()
    if not recipe.method.model_params:
        return []
    by_ref = {m.ref: m for m in recipe.models}
    return [by_ref[ref] for ref in _source_order(recipe)]


def _shared_scopes(recipe: Recipe) -> list[Scope]:
    scopes = []
    if recipe.data.slices is not None:
        scopes.append(Scope(recipe.data.slices[0].parameters, "slices[0].parameters"))
    scopes.append(Scope(recipe.data.parameters, "parameters"))
    return scopes


def _layer_span(recipe: Recipe, donor: ModelFolder) -> tuple[int, int]:
    layers = {i for name in donor.tensors if (i := layer_index(name)) is not None}
    count = max(layers) + 1 if layers else 0
    if recipe.data.slices is None:
        return 0, count
    start, stop = recipe.models[0].layer_range or (0, count)
    if stop > count:
        raise MergeError(
            f"layer_range [{start}, {stop}] goes past the {count} layers of "
            f"{recipe.models[0].ref.key!r}",
            hint=f"use a range within [0, {count}] in {recipe.models[0].field}.layer_range",
        )
    return start, stop


def _dtypes(recipe: Recipe, folders: list[ModelFolder]) -> tuple[torch.dtype, torch.dtype]:
    """The working dtype (recipe `dtype`, else the promoted storage dtype) and output dtype."""
    if recipe.dtype is not None:
        work = getattr(torch, recipe.dtype)
    else:
        floats = {s.dtype for f in folders for s in f.tensors.values() if s.dtype.is_floating_point}
        work = torch.float32 if not floats else _promote(floats)
    out = getattr(torch, recipe.out_dtype) if recipe.out_dtype is not None else work
    return work, out


def _promote(dtypes: set[torch.dtype]) -> torch.dtype:
    ordered = sorted(dtypes, key=str)
    result = ordered[0]
    for dtype in ordered[1:]:
        result = torch.promote_types(result, dtype)
    return result


def _jobs(
    recipe: Recipe,
    folders: dict[str, ModelFolder],
    order: list[ModelRef],
    donor: ModelFolder,
    start: int,
    stop: int,
    out_dtype: torch.dtype,
) -> list[TensorJob]:
    names = [n for n in donor.tensors if _in_span(n, start, stop)]
    if LM_HEAD not in names and any(LM_HEAD in folders[r.key] for r in order):
        names.append(LM_HEAD)  # an untied input makes the output untied (mergekit PR #464)
    jobs = []
    for in_name in sorted(names):
        out_name = rename_layer(in_name, -start)
        sources = [_source(folders[r.key], in_name) for r in order]
        sources = _align(recipe, in_name, sources, order)
        dtype = sources[0].dtype
        copy = not dtype.is_floating_point
        shape = tuple(sources[0].shape)
        jobs.append(
            TensorJob(OutputTensor(out_name, shape, dtype if copy else out_dtype), sources, copy)
        )
    return jobs


def _in_span(name: str, start: int, stop: int) -> bool:
    index = layer_index(name)
    return index is None or start <= index < stop


def _source(folder: ModelFolder, name: str) -> TensorSource:
    if name in folder:
        return folder[name]
    if name == LM_HEAD and EMBED in folder:
        return folder[EMBED]  # a tied model's output head is its input embedding
    raise MergeError(
        f"tensor {name!r} is missing from model {folder.key!r} ({folder.folder})",
        tensor=name,
        hint="merge models of the same architecture, or fix the layer_range",
    )


def _align(
    recipe: Recipe, name: str, sources: list[TensorSource], order: list[ModelRef]
) -> list[TensorSource]:
    """Check every input's shape against the first; align vocabulary rows when allowed."""
    first = sources[0]
    aligned = [first]
    for source, ref in zip(sources[1:], order[1:], strict=True):
        if tuple(source.shape) == tuple(first.shape):
            aligned.append(source)
        elif name.endswith(_VOCAB_SUFFIXES) and source.shape[1:] == first.shape[1:]:
            aligned.append(_vocab_rows(recipe, name, source, first, ref, order[0]))
        else:
            raise MergeError(
                f"tensor {name!r} has shape {list(source.shape)} in {ref.key!r} but "
                f"{list(first.shape)} in {order[0].key!r}",
                tensor=name,
                hint="merge models of the same architecture and size",
            )
    return aligned


def _vocab_rows(
    recipe: Recipe,
    name: str,
    source: TensorSource,
    base: TensorSource,
    ref: ModelRef,
    base_ref: ModelRef,
) -> TensorSource:
    rows, base_rows = source.shape[0], base.shape[0]
    if _tokenizer_source(recipe) != "base" or recipe.base_model != base_ref:
        raise MergeError(
            f"tensor {name!r} has {rows} rows in {ref.key!r} but {base_rows} in "
            f"{base_ref.key!r}: the vocabularies differ",
            tensor=name,
            hint="set `tokenizer_source: base` to keep the base's vocabulary (when one "
            "vocabulary extends the other); a union tokenizer is not supported yet",
        )
    logger.info("aligning %s of %s from %d to %d rows", name, ref.key, rows, base_rows)
    return PaddedRows(source, base)


def _tokenizer_source(recipe: Recipe) -> str | None:
    if recipe.data.tokenizer is not None:
        source = recipe.data.tokenizer.get("source", "union")
        return str(source)
    return recipe.data.tokenizer_source


def _tokenizer_folder(recipe: Recipe, folders: dict[str, ModelFolder], donor: ModelFolder) -> Path:
    """Where tokenizer files come from: the base (or first model), or a listed model."""
    source = _tokenizer_source(recipe)
    if source is None or source == "base":
        if source == "base":
            _check_prefix_vocab(folders, donor)
        return donor.folder
    if source == "union":
        raise MergeError(
            "tokenizer source 'union' is not supported yet",
            hint="use `tokenizer_source: base` or name one of the merged models",
        )
    for key, folder in folders.items():
        if source in (key, key.partition("@")[0]):
            return folder.folder
    raise MergeError(
        f"tokenizer_source {source!r} is none of the merged models",
        hint=f"use base or one of: {', '.join(sorted(folders))}",
    )


def _check_prefix_vocab(folders: dict[str, ModelFolder], donor: ModelFolder) -> None:
    """Refuse vocabularies that differ in their shared ids (not a mere extension)."""
    base_vocab = _vocab(donor.folder)
    if base_vocab is None:
        return
    for folder in folders.values():
        vocab = _vocab(folder.folder)
        if vocab is None or folder is donor:
            continue
        shared = min(len(vocab), len(base_vocab))
        if vocab[:shared] != base_vocab[:shared]:
            first = next(i for i in range(shared) if vocab[i] != base_vocab[i])
            raise MergeError(
                f"the vocabulary of {folder.key!r} differs from {donor.key!r} at token id "
                f"{first} ({vocab[first]!r} vs {base_vocab[first]!r}); it is not an extension",
                hint="a union tokenizer is not supported yet; merge models that share a vocabulary",
            )


def _vocab(folder: Path) -> list[str] | None:
    """Tokens by id from tokenizer.json (model vocab plus added tokens), when readable."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = dict(data["model"]["vocab"])
        ids |= {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(ids, dict) or not all(isinstance(v, int) for v in ids.values()):
        return None
    tokens = [""] * (max(ids.values()) + 1 if ids else 0)
    for token, index in ids.items():
        tokens[index] = token
    return tokens
