"""Tiny Mistral-shaped models for tests, benchmarks and the offline demo.

A family is a base model plus fine-tunes that are the base plus small seeded noise, so that
task vectors are small and dense like real fine-tunes. Every model folder is laid out as the
Hub lays out a transformers checkpoint: `config.json`, `generation_config.json`, safetensors
weights (one file or shards plus an index) and real tokenizer files (a word-level
`tokenizer.json` that the `tokenizers` library loads, with its config and special tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_SPECIAL = ["<unk>", "<s>", "</s>"]
_WORDS = (
    "the a of to and in is it that for on with as was by at be this from or an are not have "
    "merge model pearl weight layer token sign trim elect base task vector density hub commit "
    "revision lock card score bot night upstream tensor shard slerp ties dare linear"
).split()


@dataclass(frozen=True)
class TinyConfig:
    """Shape of a tiny Mistral-style decoder."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 64
    tie_word_embeddings: bool = False
    dtype: str = "float32"

    def with_(self, **changes: Any) -> TinyConfig:
        return replace(self, **changes)


def tensor_shapes(config: TinyConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every weight, as transformers' MistralForCausalLM names them."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = h // config.num_attention_heads
    kv = head_dim * config.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (h, h),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.mlp.gate_proj.weight": (i, h),
            f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
        }
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def random_weights(config: TinyConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for a base model: norms near 1, matrices ~ N(0, 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in tensor_shapes(config).items():
        if len(shape) == 1:
            weights[name] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            weights[name] = 0.02 * torch.randn(shape, generator=gen)
    return weights


def fine_tune(base: dict[str, torch.Tensor], seed: int, noise: float) -> dict[str, torch.Tensor]:
    """The base plus seeded N(0, noise) noise on every tensor: a stand-in fine-tune."""
    gen = torch.Generator().manual_seed(seed)
    return {name: t + noise * torch.randn(t.shape, generator=gen) for name, t in base.items()}


def write_model(
    folder: str | Path,
    weights: dict[str, torch.Tensor],
    config: TinyConfig,
    *,
    shards: int = 1,
) -> Path:
    """Write a model folder (weights in `config.dtype`, config, tokenizer) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, config.dtype)
    cast = {name: t.to(dtype).contiguous() for name, t in sorted(weights.items())}
    _write_weights(folder, cast, shards)
    _write_json(folder / "config.json", mistral_config(config))
    _write_json(
        folder / "generation_config.json",
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2},
    )
    write_tokenizer(folder, config.vocab_size)
    return folder


def build_family(
    root: str | Path,
    names: list[str],
    config: TinyConfig | None = None,
    *,
    seed: int = 0,
    noise: float = 0.01,
    shards: int = 1,
) -> dict[str, Path]:
    """Build `names[0]` as a base and each other name as a fine-tune of it, under `root`.

    Names may contain a slash (`org/model`); each model lands in `root/<name>`.
    """
    config = config or TinyConfig()
    base = random_weights(config, seed)
    folders = {names[0]: write_model(Path(root) / names[0], base, config, shards=shards)}
    for k, name in enumerate(names[1:], start=1):
        weights = fine_tune(base, seed * 1000 + k, noise)
        folders[name] = write_model(Path(root) / name, weights, config, shards=shards)
    return folders


def mistral_config(config: TinyConfig) -> dict[str, Any]:
    """A config.json as transformers writes it for MistralForCausalLM."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "sliding_window": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": config.dtype,
        "transformers_version": "4.46.0",
    }


def write_tokenizer(folder: str | Path, vocab_size: int) -> None:
    """Write a word-level tokenizer of exactly `vocab_size` tokens, loadable by `tokenizers`."""
    folder = Path(folder)
    words = _SPECIAL + _WORDS
    words += [f"w{k}" for k in range(max(0, vocab_size - len(words)))]
    vocab = {w: k for k, w in enumerate(words[:vocab_size])}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": k,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for k, tok in enumerate(_SPECIAL)
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    _write_json(folder / "tokenizer.json", tokenizer)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": 512,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    )


def _write_weights(folder: Path, weights: dict[str, torch.Tensor], shards: int) -> None:
    names = list(weights)
    if shards <= 1:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(shards):
        chunk = names[k * per_shard : (k + 1) * per_shard]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: weights[n] for n in chunk}, str(folder / file), metadata={"format": "pt"})
        weight_map |= {n: file for n in chunk}
        total += sum(weights[n].numel() * weights[n].element_size() for n in chunk)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(folder / "model.safetensors.index.json", index)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
