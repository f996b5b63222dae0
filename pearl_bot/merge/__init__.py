"""The merge engine: a recipe in mergekit's YAML goes in, a Hub-ready model folder comes out.

Notation, per output tensor: theta_b is the base, theta_i (i = 1..N) the other models in recipe
order, w_i their `weight`, rho_i their `density`; n is the tensor's number of elements.

- task vector: delta_i = theta_i - theta_b
- trim (`ties`): keep the k_i = max(1, int(rho_i * n)) largest |delta_i| of the whole tensor,
  zero the rest (rho >= 1 keeps all, rho <= 0 zeroes all).
- drop (`dare_ties`): keep each element with probability rho_i (seeded per tensor and model
  from `build.seed`); with `rescale` (default on), multiply by ||delta_i||_1 / ||kept||_1.
- weight: tau_i = w_i * trimmed delta_i
- elect sign (`ties`, `dare_ties`): s = +1 where sum_i tau_i >= 0, else -1.
- disjoint merge: Delta = sum_i [sign(tau_i) = s] tau_i; with `normalize` (default on for
  `ties`), divided by sum_i [sign(tau_i) = s] w_i (0 replaced by 1).
- `task_arithmetic`: Delta = sum_i tau_i (untrimmed), divided by sum_i w_i with `normalize`.
- theta = theta_b + lambda * Delta
- `linear`: theta = sum_i w_i theta_i / sum_i w_i (the division only with `normalize`,
  default on; the base is an ordinary input here).
- `slerp`: with a, b the flattened base and other model, d = <a/|a|, b/|b|>, Omega = acos d:
  theta = sin((1-t) Omega)/sin Omega * a + sin(t Omega)/sin Omega * b, or (1-t) a + t b when
  |d| > 0.9995.

Numeric modes (recorded in the safetensors metadata as `pearl_bot_numerics`):

- `precise` (default): float32 arithmetic whatever the storage dtype, cast once to `out_dtype`
  (else `dtype`); the trim keeps exactly k elements, ties at the threshold broken by lowest
  flat index, threshold found in O(n) by bit-pattern histograms (see `precise`).
- `mergekit`: mergekit 0.1.5's working dtype and operation order, bit-identical on CPU
  (see `compat`).

Parameters resolve per tensor (scalars, gradients over layers, `{filter, value}` lists) with
the precedence per-model > slice > global > default (see `params`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pearl_bot.merge.engine import MergeResult, merge_recipe, parse_size

__all__ = ["MergeResult", "merge_recipe", "parse_size"]


def __getattr__(name: str) -> Any:
    # The engine imports torch; `pearl_bot.merge.spec` (read by the recipe validator and
    # `pearl-bot check`) must stay importable without it, so the engine loads on first use.
    if name in __all__:
        from pearl_bot.merge import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
