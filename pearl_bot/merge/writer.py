"""Writing the output folder: streamed safetensors shards, the index and the side files.

Every output tensor's name, shape and dtype is known before any arithmetic runs, so the shard
layout and each shard's header are fixed up front, and tensor bytes are appended to the open
shard as they are computed: no shard is ever buffered in memory. Tensors go in sorted name
order; a shard is closed when the next tensor would take it past the shard size (as mergekit
and transformers do). One shard is written as `model.safetensors`; several as
`model-0000N-of-0000M.safetensors` plus `model.safetensors.index.json`.

Everything is written into a temporary sibling folder that is renamed into place only when the
whole model is complete, so a failed merge leaves no output folder behind.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from pearl_bot.errors import MergeError
from pearl_bot.merge.reader import DTYPE_NAMES

logger = logging.getLogger(__name__)

#: Tokenizer and generation files copied from the tokenizer / config donor when present.
TOKENIZER_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
)


@dataclass(frozen=True)
class OutputTensor:
    """A tensor of the output model, as planned before the merge computes it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(tensors: Sequence[OutputTensor], shard_size: int) -> list[list[OutputTensor]]:
    """Split tensors (in sorted name order) into shards of at most `shard_size` bytes each.

    A tensor larger than the shard size gets a shard of its own.
    """
    shards: list[list[OutputTensor]] = [[]]
    used = 0
    for tensor in sorted(tensors, key=lambda t: t.name):
        if shards[-1] and used + tensor.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(tensor)
        used += tensor.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names of `count` shards, as transformers names them."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def safetensors_header(tensors: Sequence[OutputTensor], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length plus the JSON header of a safetensors file holding `tensors` in order.

    The header is padded with spaces to a multiple of 8 bytes so the data is aligned.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Appends tensors, chunk by chunk, to pre-planned safetensors shards in a folder."""

    def __init__(
        self, folder: Path, tensors: Sequence[OutputTensor], shard_size: int, numerics: str
    ) -> None:
        self.folder = folder
        self.shards = plan_shards(tensors, shard_size)
        self.names = shard_names(len(self.shards))
        self.metadata = {"format": "pt", "pearl_bot_numerics": numerics}
        self._queue = [(k, t) for k, shard in enumerate(self.shards) for t in shard]
        self._position = 0
        self._file: IO[bytes] | None = None
        self._open_shard = -1
        self._remaining = 0

    @property
    def order(self) -> list[str]:
        """Tensor names in the order they must be written."""
        return [t.name for _, t in self._queue]

    def begin(self, name: str) -> OutputTensor:
        """Start the next tensor, which must be `name`; returns its planned shape and dtype."""
        shard, tensor = self._queue[self._position]
        if tensor.name != name or self._remaining:
            raise RuntimeError(f"writer expected {tensor.name!r}, got {name!r}")
        if shard != self._open_shard:
            self._switch_to(shard)
        self._remaining = tensor.nbytes
        return tensor

    def write(self, chunk: torch.Tensor) -> None:
        """Append the next contiguous flat piece of the current tensor."""
        data: Any = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._remaining:
            raise RuntimeError("chunk overruns the planned tensor size")
        assert self._file is not None
        self._file.write(memoryview(data))
        self._remaining -= data.nbytes
        if not self._remaining:
            self._position += 1

    def close(self) -> None:
        """Close the last shard; every planned tensor must have been written."""
        if self._position != len(self._queue):
            raise RuntimeError("output closed before every tensor was written")
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        """Close any open file without checks (the folder is about to be removed)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _switch_to(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        path = self.folder / self.names[shard]
        logger.debug("writing shard %s", path.name)
        self._file = path.open("wb")
        self._file.write(safetensors_header(self.shards[shard], self.metadata))
        self._open_shard = shard

    def write_index(self) -> None:
        """Write model.safetensors.index.json when there is more than one shard."""
        if len(self.shards) == 1:
            return
        pairs = zip(self.names, self.shards, strict=True)
        weight_map = {t.name: name for name, shard in pairs for t in shard}
        total = sum(t.nbytes for shard in self.shards for t in shard)
        index = {
            "metadata": {
                "total_size": total,
                "pearl_bot_numerics": self.metadata["pearl_bot_numerics"],
            },
            "weight_map": dict(sorted(weight_map.items())),
        }
        write_json(self.folder / "model.safetensors.index.json", index)

    @property
    def files(self) -> list[str]:
        extra = ["model.safetensors.index.json"] if len(self.shards) > 1 else []
        return [*self.names, *extra]


def write_json(path: Path, data: Any) -> None:
    """Write JSON with sorted keys and indent 2, ending in a newline (stable bytes)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_side_files(folder: Path, tokenizer_donor: Path, config_donor: Path) -> list[str]:
    """Copy tokenizer files from the tokenizer donor and generation_config.json from the base."""
    copied = []
    for name in TOKENIZER_FILES:
        if (tokenizer_donor / name).is_file():
            shutil.copyfile(tokenizer_donor / name, folder / name)
            copied.append(name)
    if (config_donor / "generation_config.json").is_file():
        shutil.copyfile(config_donor / "generation_config.json", folder / "generation_config.json")
        copied.append("generation_config.json")
    return copied


def output_config(
    config: Mapping[str, Any], dtype: torch.dtype, tied: bool, num_layers: int | None
) -> dict[str, Any]:
    """The base's config.json with the dtype, the tie flag and the layer count updated."""
    out = dict(config)
    dtype_name = str(dtype).removeprefix("torch.")
    keys = [k for k in ("torch_dtype", "dtype") if k in out] or ["torch_dtype"]
    for key in keys:
        out[key] = dtype_name
    out["tie_word_embeddings"] = tied
    if num_layers is not None and "num_hidden_layers" in out:
        out["num_hidden_layers"] = num_layers
    return out


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that exists with files in it: a merge never overwrites one."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MergeError(
            f"output folder {out_dir.resolve()} already exists and is not empty",
            path=out_dir,
            hint="choose a new --out folder or remove the old one",
        )


@contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of `out_dir`, renamed to it on success and removed on failure."""
    out_dir = out_dir.resolve()
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()
    tmp.chmod(0o755)
    tmp.rename(out_dir)
