"""A small real evaluation for the `scores.command` tests: perplexity of a causal LM on a text.

Usage: python perplexity.py MODEL_DIR RESULTS_DIR [TEXT_FILE]

It loads the model and tokenizer with transformers, scores every token of the text (one
sequence, teacher forcing), and writes the result in lm-evaluation-harness 0.4's format to
RESULTS_DIR/<model folder name>/results_<time>.json, as `lm_eval --output_path` does.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TASK = "tiny_text"


def perplexity(model_dir: Path, text: str) -> tuple[float, int]:
    """exp(mean negative log-likelihood) over the text's tokens after the first."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss)), int(ids.shape[1])


def main(argv: list[str]) -> int:
    model_dir, results_dir = Path(argv[0]), Path(argv[1])
    text_file = Path(argv[2]) if len(argv) > 2 else Path(__file__).with_name("eval_text.txt")
    value, tokens = perplexity(model_dir, text_file.read_text(encoding="utf-8"))
    results = {
        "results": {TASK: {"alias": TASK, "word_perplexity,none": value, "tokens,none": tokens}},
        "group_subtasks": {TASK: []},
        "configs": {TASK: {"task": TASK, "dataset_path": "pearl-bot/tiny-text", "num_fewshot": 0}},
        "versions": {TASK: 1.0},
        "n-shot": {TASK: 0},
        "higher_is_better": {TASK: {"word_perplexity": False, "tokens": True}},
        "config": {"model": "hf", "model_args": f"pretrained={model_dir}"},
    }
    out = results_dir / model_dir.name / f"results_{time.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"{TASK}: word_perplexity {value:.4f} over {tokens} tokens -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
