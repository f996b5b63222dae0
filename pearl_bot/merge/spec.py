"""What each merge method accepts: parameter names, scopes, types and defaults.

This table is the single source of truth for the recipe validator and the merge engine. It
follows mergekit 0.1.5 (see ../shared/research/mergekit.md §1.3), and it imports no torch so
that `pearl-bot check` starts fast.

Scopes: a *global* parameter is read once per output tensor (`normalize`, `t`); a *per-model*
parameter is read per input model and tensor (`weight`, `density`). A global `weight:` or
`density:` is a fallback for models that do not set their own, as in mergekit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ParamType = Literal["float", "bool"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method."""

    name: str
    type: ParamType
    default: float | bool | None = None
    required: bool = False
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its parameters, whether it needs a base model, and its paper."""

    name: str
    pretty_name: str
    paper_url: str | None
    needs_base: bool
    global_params: tuple[ParamSpec, ...] = ()
    model_params: tuple[ParamSpec, ...] = ()
    # A method that takes a task vector of every non-base model against the base.
    task_vectors: bool = field(default=False)
    max_models: int | None = None

    def param(self, name: str) -> ParamSpec | None:
        """The spec of parameter `name` in either scope, or None when the method lacks it."""
        for spec in (*self.global_params, *self.model_params):
            if spec.name == name:
                return spec
        return None

    @property
    def param_names(self) -> list[str]:
        return sorted({p.name for p in (*self.global_params, *self.model_params)})


def _gta_globals(*, normalize: bool, rescale: bool) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("int8_mask", "bool", default=False),
        ParamSpec("normalize", "bool", default=normalize),
        ParamSpec("lambda", "float", default=1.0),
        ParamSpec("rescale", "bool", default=rescale),
    )


_WEIGHT = ParamSpec("weight", "float", required=True)
_DENSITY = ParamSpec("density", "float", default=1.0, low=0.0, high=1.0)

METHODS: dict[str, MethodSpec] = {
    "ties": MethodSpec(
        name="ties",
        pretty_name="TIES",
        paper_url="https://arxiv.org/abs/2306.01708",
        needs_base=True,
        task_vectors=True,
        global_params=_gta_globals(normalize=True, rescale=False),
        model_params=(_WEIGHT, _DENSITY),
    ),
    "dare_ties": MethodSpec(
        name="dare_ties",
        pretty_name="DARE TIES",
        paper_url="https://arxiv.org/abs/2311.03099",
        needs_base=True,
        task_vectors=True,
        global_params=_gta_globals(normalize=False, rescale=True),
        model_params=(_WEIGHT, _DENSITY),
    ),
    "task_arithmetic": MethodSpec(
        name="task_arithmetic",
        pretty_name="Task Arithmetic",
        paper_url="https://arxiv.org/abs/2212.04089",
        needs_base=True,
        task_vectors=True,
        global_params=_gta_globals(normalize=False, rescale=False),
        model_params=(_WEIGHT, _DENSITY),
    ),
    "linear": MethodSpec(
        name="linear",
        pretty_name="Linear",
        paper_url="https://arxiv.org/abs/2203.05482",
        needs_base=False,
        global_params=(ParamSpec("normalize", "bool", default=True),),
        model_params=(_WEIGHT,),
    ),
    "slerp": MethodSpec(
        name="slerp",
        pretty_name="SLERP",
        paper_url="https://en.wikipedia.org/wiki/Slerp",
        needs_base=True,
        global_params=(ParamSpec("t", "float", required=True),),
        max_models=2,
    ),
}

#: The numeric modes of the engine (see `pearl_bot.merge` for the formulas).
NUMERICS = ("precise", "mergekit")

#: dtype names a recipe may use, as mergekit reads them (a `torch.` prefix is allowed).
DTYPES = ("float16", "bfloat16", "float32", "float64")


def get_method(name: str) -> MethodSpec | None:
    """The spec of merge method `name`, or None when pearl-bot does not support it."""
    return METHODS.get(name)
