"""The semantic checks of a recipe, run after pydantic has accepted its shape.

They make pearl-bot stricter than mergekit where mergekit silently does the wrong thing: an
unknown parameter name for the method, a parameter in the wrong scope, a density outside
[0, 1], a missing required `weight` or `t`, a malformed gradient or filter list, a duplicate
model, slices that stitch different layer ranges. Every error names the recipe file, the field
path and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pearl_bot.errors import RecipeError
from pearl_bot.merge.spec import DTYPES, METHODS, MethodSpec, ParamSpec
from pearl_bot.recipe import (
    InputModel,
    ModelRef,
    Recipe,
    RecipeData,
    SliceData,
    SourceData,
    normalize_dtype,
    parse_model_ref,
)


def validate(data: RecipeData, text: str, path: Path | None) -> Recipe:
    """Check the semantics of `data` (read from `text` at `path`) and build the `Recipe`."""
    return _Validator(data, text, path).build()


class _Validator:
    """Checks the semantics of a recipe whose shape pydantic already accepted."""

    def __init__(self, data: RecipeData, text: str, path: Path | None) -> None:
        self.data = data
        self.text = text
        self.path = path
        self.base_dir = path.parent if path is not None else Path.cwd()

    def fail(self, field: str, message: str, hint: str | None = None) -> RecipeError:
        return RecipeError(message, path=self.path, field=field, hint=hint)

    def build(self) -> Recipe:
        method = self.method()
        self.check_dtypes()
        models, slice_params = self.inputs()
        base = self.base(models)
        recipe = Recipe(
            path=self.path,
            text=self.text,
            data=self.data,
            method=method,
            base_model=base,
            models=tuple(models),
            parameters={**self.data.parameters, **slice_params},
        )
        self.check_method_shape(recipe)
        self.check_parameters(recipe, slice_params)
        return recipe

    def method(self) -> MethodSpec:
        name = self.data.merge_method
        spec = METHODS.get(name)
        if spec is None:
            raise self.fail(
                "merge_method",
                f"unsupported merge method {name!r}",
                f"use one of: {', '.join(sorted(METHODS))}",
            )
        return spec

    def check_dtypes(self) -> None:
        for key in ("dtype", "out_dtype"):
            value = normalize_dtype(getattr(self.data, key))
            if value is not None and value not in DTYPES:
                raise self.fail(key, f"unknown dtype {value!r}", f"use one of: {', '.join(DTYPES)}")

    def inputs(self) -> tuple[list[InputModel], dict[str, Any]]:
        if "modules" in (self.data.model_extra or {}):
            raise self.fail("modules", "multi-module recipes are not supported yet")
        if self.data.models is not None and self.data.slices is not None:
            raise self.fail("slices", "a recipe has either `models` or `slices`, not both")
        if self.data.models is not None:
            return self.models_inputs(self.data.models), {}
        if self.data.slices is not None:
            return self.slice_inputs(self.data.slices)
        raise self.fail("models", "the recipe lists no models", "add a `models:` list")

    def models_inputs(self, sources: list[SourceData]) -> list[InputModel]:
        if not sources:
            raise self.fail("models", "must list at least one model")
        return self.collect(sources, "models")

    def slice_inputs(self, slices: list[SliceData]) -> tuple[list[InputModel], dict[str, Any]]:
        if not slices:
            raise self.fail("slices", "must list at least one slice")
        for i, slice_ in enumerate(slices):
            self.check_slice_ranges(slice_, f"slices[{i}]")
        if len(slices) > 1:
            raise self.fail(
                "slices[1]",
                "recipes that stitch several slices are not supported yet",
                "use one slice whose sources share a layer range",
            )
        if slices[0].base_model is not None and self.data.base_model is None:
            self.data.base_model = slices[0].base_model
        return self.collect(slices[0].sources, "slices[0].sources"), slices[0].parameters

    def check_slice_ranges(self, slice_: SliceData, where: str) -> None:
        if not slice_.sources:
            raise self.fail(f"{where}.sources", "must list at least one source")
        first = None
        for j, source in enumerate(slice_.sources):
            field = f"{where}.sources[{j}].layer_range"
            if source.layer_range is None:
                raise self.fail(field, "required field is missing", "write [start, end]")
            start, end = source.layer_range
            if not 0 <= start < end:
                raise self.fail(field, f"{list(source.layer_range)} is not a range [start, end)")
            if first is None:
                first = source.layer_range
            elif end - start != first[1] - first[0]:
                raise self.fail(
                    field,
                    f"spans {end - start} layers but sources[0] spans {first[1] - first[0]}",
                    "every source in a slice must span the same number of layers",
                )
            elif source.layer_range != first:
                raise self.fail(
                    field,
                    f"{list(source.layer_range)} differs from sources[0]'s {list(first)}",
                    "sources with different layer ranges are not supported yet",
                )

    def collect(self, sources: list[SourceData], where: str) -> list[InputModel]:
        models: list[InputModel] = []
        seen: dict[ModelRef, str] = {}
        for i, source in enumerate(sources):
            field = f"{where}[{i}]"
            ref = self.ref(source.model, f"{field}.model")
            if ref in seen:
                raise self.fail(
                    f"{field}.model",
                    f"{ref.key!r} is listed twice (also {seen[ref]})",
                    "list each model once",
                )
            seen[ref] = field
            models.append(InputModel(ref, dict(source.parameters), source.layer_range, field))
        return models

    def ref(self, value: Any, field: str) -> ModelRef:
        try:
            return parse_model_ref(value, base_dir=self.base_dir)
        except ValueError as err:
            raise self.fail(field, str(err)) from None

    def base(self, models: list[InputModel]) -> ModelRef | None:
        if self.data.base_model is None:
            return None
        return self.ref(self.data.base_model, "base_model")

    def check_method_shape(self, recipe: Recipe) -> None:
        method = recipe.method
        if method.needs_base and recipe.base_model is None:
            raise self.fail(
                "base_model",
                f"merge method {method.name!r} needs a base model",
                "set `base_model:` to the model the others were fine-tuned from",
            )
        if method.max_models is not None:
            refs = recipe.upstreams()
            if len(refs) != method.max_models:
                raise self.fail(
                    "models",
                    f"{method.name} merges exactly {method.max_models} models, got {len(refs)}",
                )
        if method.name == "slerp" and recipe.base_model not in [m.ref for m in recipe.models]:
            raise self.fail("base_model", "for slerp the base model must be one of the two models")
        if method.task_vectors and not recipe.non_base_models():
            raise self.fail("models", "lists only the base model; add the models to merge")

    def check_parameters(self, recipe: Recipe, slice_params: dict[str, Any]) -> None:
        method = recipe.method
        scopes = [("parameters", self.data.parameters)]
        if self.data.slices is not None:
            scopes.append(("slices[0].parameters", slice_params))
        for where, params in scopes:
            for name, value in params.items():
                self.check_param(method, name, value, f"{where}.{name}", scope="global")
        for model in recipe.models:
            is_base = model.ref == recipe.base_model and method.task_vectors
            for name, value in model.parameters.items():
                field = f"{model.field}.parameters.{name}"
                self.check_param(method, name, value, field, scope="model")
                if is_base and name in {"weight", "density"}:
                    raise self.fail(
                        field,
                        f"the base model is not merged as a task vector by {method.name}, "
                        f"so its {name} would be ignored",
                        "remove it",
                    )
        self.check_required(recipe)

    def check_param(
        self, method: MethodSpec, name: str, value: Any, field: str, scope: str
    ) -> None:
        spec = method.param(name)
        if spec is None:
            close = difflib.get_close_matches(name, method.param_names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            accepted = ", ".join(method.param_names) or "none"
            raise self.fail(
                field,
                f"unknown parameter {name!r} for merge method {method.name} (it takes: {accepted})",
                hint,
            )
        if scope == "model" and spec in method.global_params:
            raise self.fail(
                field,
                f"{name!r} applies to the whole merge, not to one model",
                "move it to the top-level `parameters:`",
            )
        for sub_field, item in _param_leaves(value, field, self):
            self.check_value(spec, item, sub_field)

    def check_value(self, spec: ParamSpec, value: Any, field: str) -> None:
        if spec.type == "bool":
            if not isinstance(value, bool):
                raise self.fail(field, f"must be true or false (got {value!r})")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(field, f"must be a number (got {value!r})")
        if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
            raise self.fail(
                field, f"must be between {spec.low:g} and {spec.high:g} (got {value!r})"
            )

    def check_required(self, recipe: Recipe) -> None:
        method = recipe.method
        for spec in method.global_params:
            if spec.required and spec.name not in recipe.parameters:
                raise self.fail(
                    f"parameters.{spec.name}",
                    f"merge method {method.name} requires parameter {spec.name!r}",
                )
        needs = recipe.non_base_models() if method.task_vectors else list(recipe.models)
        for spec in method.model_params:
            if not spec.required:
                continue
            for model in needs:
                if spec.name not in model.parameters and spec.name not in recipe.parameters:
                    raise self.fail(
                        f"{model.field}.parameters.{spec.name}",
                        f"missing required parameter {spec.name!r} for model {model.ref.key!r}",
                        f"set it on the model or as a global `parameters.{spec.name}`",
                    )


def _param_leaves(value: Any, field: str, v: _Validator) -> Iterator[tuple[str, Any]]:
    """Yield every scalar inside a parameter value: a scalar, a gradient or a filter list."""
    if isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
        for i, entry in enumerate(value):
            unknown = set(entry) - {"filter", "value"}
            if unknown or "value" not in entry:
                raise v.fail(
                    f"{field}[{i}]",
                    "a filter entry takes `filter` (a tensor-name substring) and `value`",
                )
            if "filter" in entry and not isinstance(entry["filter"], str):
                raise v.fail(f"{field}[{i}].filter", f"must be a string (got {entry['filter']!r})")
            yield from _gradient_leaves(entry["value"], f"{field}[{i}].value", v)
        return
    yield from _gradient_leaves(value, field, v)


def _gradient_leaves(value: Any, field: str, v: _Validator) -> Iterator[tuple[str, Any]]:
    if not isinstance(value, list):
        yield field, value
        return
    if len(value) < 2:
        raise v.fail(
            field,
            f"a gradient needs at least 2 values (got {value!r})",
            "write a single value as a scalar",
        )
    for i, item in enumerate(value):
        if isinstance(item, list | Mapping):
            raise v.fail(f"{field}[{i}]", f"must be a number (got {item!r})")
        yield f"{field}[{i}]", item
