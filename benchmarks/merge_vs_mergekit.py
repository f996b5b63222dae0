"""Benchmark: pearl-bot's merge engine against mergekit 0.1.5 on a ~160M-parameter bf16 family.

Builds (once, cached) a Mistral-shaped family: a base plus 4 fine-tunes (base + N(0, 0.002)),
hidden 1024, 8 layers, vocab 32000, stored in bfloat16 like real checkpoints. Then runs a TIES
merge (densities 0.4-0.6, `dtype: bfloat16`) with mergekit-yaml, pearl-bot `precise` and
pearl-bot `mergekit` numerics, alternating the tools round by round. Each run is its own
process, launched by a small wrapper process so that the wrapper's RUSAGE_CHILDREN peak RSS is
that one tool's. Prints wall time and peak RSS per run, the medians and the ratios.

    python benchmarks/merge_vs_mergekit.py [--workdir DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pearl_bot.testing.models import TinyConfig, build_family

CONFIG = TinyConfig(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
    dtype="bfloat16",
)
NAMES = ["base", "ft1", "ft2", "ft3", "ft4"]
DENSITIES = [0.6, 0.5, 0.5, 0.4]
WEIGHTS = [0.4, 0.2, 0.2, 0.2]

# The wrapper runs one command as its only child and prints that child's wall time and peak
# RSS (ru_maxrss is in KiB on Linux).
WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

PEARL = """
import sys
from pathlib import Path
from pearl_bot.merge import merge_recipe
from pearl_bot.recipe import load_recipe
merge_recipe(load_recipe(sys.argv[1]), Path(sys.argv[2]), numerics=sys.argv[3], progress=False)
"""


def recipe_text(root: Path) -> str:
    """A TIES recipe over the family, as mergekit users write it."""
    lines = ["models:", f"  - model: {root / NAMES[0]}"]
    for name, density, weight in zip(NAMES[1:], DENSITIES, WEIGHTS, strict=True):
        lines += [
            f"  - model: {root / name}",
            f"    parameters: {{density: {density}, weight: {weight}}}",
        ]
    lines += [
        "merge_method: ties",
        f"base_model: {root / NAMES[0]}",
        "parameters: {normalize: true, int8_mask: true}",
        "dtype: bfloat16",
    ]
    return "\n".join(lines) + "\n"


def ensure_family(root: Path) -> None:
    """Build the family once; later runs reuse it."""
    if (root / NAMES[-1] / "model.safetensors").is_file():
        return
    print(f"building the family under {root} ...", flush=True)
    build_family(root, NAMES, CONFIG, seed=7, noise=0.002)


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (GB) of one command, run in its own wrapper process."""
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command], check=True, capture_output=True, text=True
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": data["wall"], "rss_gb": data["rss"] * 1024 / 1e9}


def commands(recipe: Path, out: Path) -> dict[str, list[str]]:
    mergekit_yaml = shutil.which("mergekit-yaml") or "mergekit-yaml"
    return {
        "mergekit": [mergekit_yaml, str(recipe), str(out), "--no-copy-tokenizer"],
        "pearl precise": [sys.executable, "-c", PEARL, str(recipe), str(out), "precise"],
        "pearl mergekit": [sys.executable, "-c", PEARL, str(recipe), str(out), "mergekit"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pearl-bench")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # mergekit's card probes the Hub for local paths
    root = args.workdir / "family"
    ensure_family(root)
    recipe = args.workdir / "ties.yml"
    recipe.write_text(recipe_text(root), encoding="utf-8")
    out = args.workdir / "out"
    runs: dict[str, list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for tool, command in commands(recipe, out).items():
            shutil.rmtree(out, ignore_errors=True)
            result = measure(command)
            runs.setdefault(tool, []).append(result)
            print(
                f"round {round_ + 1} {tool:15s} {result['wall']:7.1f} s {result['rss_gb']:6.2f} GB",
                flush=True,
            )
    shutil.rmtree(out, ignore_errors=True)
    report(runs)


def report(runs: dict[str, list[dict[str, float]]]) -> None:
    """Medians per tool and the ratios against mergekit."""
    med = {
        tool: (statistics.median(r["wall"] for r in rs), statistics.median(r["rss_gb"] for r in rs))
        for tool, rs in runs.items()
    }
    ref_wall, ref_rss = med["mergekit"]
    print("\ntool              wall (s)  peak RSS (GB)  speed-up  RSS ratio")
    for tool, (wall, rss) in med.items():
        print(f"{tool:16s} {wall:9.1f} {rss:14.2f} {ref_wall / wall:9.2f}x {rss / ref_rss:9.2f}")


if __name__ == "__main__":
    main()
