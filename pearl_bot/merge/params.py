"""Per-tensor parameter values: scalars, gradients and filter lists, with mergekit's precedence.

A recipe parameter is a scalar, a gradient (a list of numbers interpolated over the layers of a
slice) or a filter list (`[{filter, value}, ...]`, the first entry whose `filter` is a substring
of the tensor name wins). Values are looked up from the highest scope down: the model's own
`parameters` > the slice's `parameters` > the top-level `parameters` > the method default. A
filter list that matches nothing falls through to the next scope, as in mergekit 0.1.5.

Gradients are evaluated at t = j / (L - 1) for layer j of a slice of L layers (t = 1 when
L = 1); every tensor outside the layers (embeddings, final norm, lm_head) is evaluated at t = 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pearl_bot.errors import MergeError
from pearl_bot.merge.spec import MethodSpec, ParamSpec

_LAYER = re.compile(r"((?:^|\.)layers\.)(\d+)(\.)")


@dataclass(frozen=True)
class Scope:
    """One level of parameter lookup: its values and the recipe field that holds them."""

    values: Mapping[str, Any]
    field: str


def layer_index(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to (`model.layers.7.mlp...` -> 7), or None."""
    match = _LAYER.search(tensor_name)
    return int(match.group(2)) if match else None


def rename_layer(tensor_name: str, offset: int) -> str:
    """The name of `tensor_name` with its layer index shifted by `offset`."""
    if offset == 0:
        return tensor_name
    return _LAYER.sub(
        lambda m: f"{m.group(1)}{int(m.group(2)) + offset}{m.group(3)}", tensor_name, 1
    )


def gradient_t(out_layer: int | None, num_layers: int) -> float:
    """The position t in [0, 1] of an output layer in its slice; 0 outside the layers."""
    if out_layer is None:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return out_layer / (num_layers - 1)


def evaluate(value: Any, tensor_name: str, t: float, spec: ParamSpec) -> Any:
    """Evaluate one setting for a tensor; None when a filter list matches nothing."""
    if isinstance(value, list) and value and all(isinstance(e, Mapping) for e in value):
        for entry in value:
            pattern = entry.get("filter")
            if pattern is None or pattern == "*" or pattern in tensor_name:
                return evaluate(entry["value"], tensor_name, t, spec)
        return None
    if isinstance(value, list):
        return _interpolate(value, t, spec)
    return _coerce(value, spec)


def _interpolate(values: Sequence[Any], t: float, spec: ParamSpec) -> Any:
    """mergekit's gradient: linear between neighbours for numbers, a step for booleans."""
    items = [_coerce(v, spec) for v in values]
    if spec.type == "bool":
        return items[int(t * (len(items) - 1))]
    scaled = t * (len(items) - 1)
    i0 = int(scaled)
    i1 = min(len(items) - 1, i0 + 1)
    frac = scaled - i0
    return float((1 - frac) * items[i0] + frac * items[i1])


def _coerce(value: Any, spec: ParamSpec) -> Any:
    if spec.type == "bool":
        return bool(value)
    return float(value)


def resolve(spec: ParamSpec, scopes: Sequence[Scope], tensor_name: str, t: float, who: str) -> Any:
    """The value of one parameter for one tensor: first scope that yields one, else default.

    `who` names the model (or "the merge") in the error for a required value that is missing.
    """
    for scope in scopes:
        if spec.name in scope.values:
            found = evaluate(scope.values[spec.name], tensor_name, t, spec)
            if found is not None:
                return found
    if spec.required:
        fields = " or ".join(f"`{s.field}.{spec.name}`" for s in scopes) or spec.name
        raise MergeError(
            f"no value of required parameter {spec.name!r} for {who} at tensor {tensor_name!r}",
            tensor=tensor_name,
            hint=f"add a value (or a filter entry without `filter`) to {fields}",
        )
    return spec.default


@dataclass(frozen=True)
class TensorParams:
    """Resolved parameters of one output tensor: shared ones and one dict per input model."""

    shared: dict[str, Any]
    per_model: tuple[dict[str, Any], ...]


def resolve_tensor(
    method: MethodSpec,
    out_name: str,
    in_name: str,
    t: float,
    model_scopes: Sequence[Sequence[Scope]],
    shared_scopes: Sequence[Scope],
    model_names: Sequence[str],
) -> TensorParams:
    """Resolve every parameter of `method` for one tensor.

    Shared parameters are matched against the output tensor name, per-model ones against the
    input tensor name (they differ when a slice starts past layer 0), as mergekit does.
    """
    shared = {
        spec.name: resolve(spec, shared_scopes, out_name, t, "the merge")
        for spec in method.global_params
    }
    per_model = tuple(
        {
            spec.name: resolve(spec, [*scopes, *shared_scopes], in_name, t, f"model {who!r}")
            for spec in method.model_params
        }
        for scopes, who in zip(model_scopes, model_names, strict=True)
    )
    return TensorParams(shared=shared, per_model=per_model)
