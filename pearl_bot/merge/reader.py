"""Reading model folders tensor by tensor, without ever loading a whole model.

Safetensors files are indexed from their headers (parsed here, so that a truncated file or a
Git LFS pointer is named as such) and read with positioned reads of exactly the bytes of one
tensor, or of a flat range of it. Positioned reads keep the process's resident memory at the
size of the tensors in flight: a memory map would keep every page it touched resident until the
file is closed. `.bin` (pickle) checkpoints are refused unless the caller allows them; then each
file is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from pearl_bot.errors import MergeError

logger = logging.getLogger(__name__)

#: safetensors dtype names and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100_000_000
_LFS_MAGIC = b"version https://git-lfs"


class TensorSource(Protocol):
    """One input tensor: its shape and dtype, readable whole or as a flat element range."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def origin(self) -> str: ...

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, in the stored dtype."""
        ...


def numel(source: TensorSource) -> int:
    """Number of elements of a tensor source."""
    return math.prod(source.shape)


def read_all(source: TensorSource) -> torch.Tensor:
    """The whole tensor in its stored shape and dtype."""
    return source.read().reshape(source.shape)


@dataclass(frozen=True)
class FileTensor:
    """A tensor stored in a safetensors file, read by byte offset."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    path: Path
    offset: int

    @property
    def origin(self) -> str:
        return str(self.path)

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = numel(self) if stop is None else stop
        size = self.dtype.itemsize
        out = torch.empty((stop - start) * size, dtype=torch.uint8)
        buffer: Any = out.numpy()
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.offset + start * size)
            got = f.readinto(buffer) if out.numel() else 0
        if got != out.numel():
            raise MergeError(
                f"{self.path.name} ends before the data of tensor {self.name!r}: the file is "
                "truncated",
                tensor=self.name,
                path=self.path,
                hint="download the model again",
            )
        return out.view(self.dtype)


@dataclass(frozen=True)
class MemoryTensor:
    """A tensor already in memory (from a pickle checkpoint)."""

    name: str
    tensor: torch.Tensor
    origin: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.tensor.reshape(-1)[start:stop]


@dataclass(frozen=True)
class PaddedRows:
    """An input whose rows are truncated or padded (with the base's rows) to the base's count.

    Used for embed_tokens / lm_head when one vocabulary extends the other and
    `tokenizer_source: base` asks for the base's vocabulary.
    """

    inner: TensorSource
    base: TensorSource

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.base.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def origin(self) -> str:
        return self.inner.origin

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = numel(self) if stop is None else stop
        split = min(numel(self.inner), numel(self))
        parts = []
        if start < split:
            parts.append(self.inner.read(start, min(stop, split)))
        if stop > split:
            parts.append(self.base.read(max(start, split), stop).to(self.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class ModelFolder:
    """The tensors of one model folder, indexed by name from the file headers."""

    def __init__(self, key: str, folder: Path, *, allow_pickle: bool = False) -> None:
        self.key = key
        self.folder = folder
        self.tensors: dict[str, TensorSource] = _index_folder(key, folder, allow_pickle)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorSource:
        return self.tensors[name]

    def config(self) -> dict[str, object]:
        """The folder's config.json, or an empty dict when it has none."""
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise MergeError(
                f"config.json of {self.key!r} is not valid JSON ({err})", path=path
            ) from err
        return data if isinstance(data, dict) else {}


def _index_folder(key: str, folder: Path, allow_pickle: bool) -> dict[str, TensorSource]:
    if not folder.is_dir():
        raise MergeError(
            f"model folder of {key!r} not found: {folder}",
            path=folder,
            hint="check the path in the recipe, or download the model first",
        )
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return _index_safetensors(_weight_files(folder, files))
    pickles = sorted(folder.glob("*.bin"))
    if pickles and allow_pickle:
        return _index_pickles(pickles)
    if pickles:
        raise MergeError(
            f"{key!r} has only pickle (.bin) weights ({pickles[0].name}); unpickling can run "
            "arbitrary code",
            path=folder,
            hint="use a safetensors revision of the model, or pass --allow-pickle to load them "
            "with torch.load(weights_only=True)",
        )
    raise MergeError(
        f"no tensors in the model folder of {key!r} ({folder}): no *.safetensors or *.bin file",
        path=folder,
        hint="check that the folder holds a downloaded checkpoint",
    )


def _weight_files(folder: Path, files: list[Path]) -> list[Path]:
    """The shards named by the index when there is one (ignoring stray files), else all."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return files
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise MergeError(f"cannot read {index.name} ({err})", path=index) from err
    return sorted({folder / name for name in weight_map.values()})


def _index_safetensors(files: list[Path]) -> dict[str, TensorSource]:
    tensors: dict[str, TensorSource] = {}
    for path in files:
        for source in read_header(path):
            tensors[source.name] = source
    return tensors


def read_header(path: Path) -> Iterator[FileTensor]:
    """Every tensor described by the header of safetensors file `path`."""
    if not path.is_file():
        raise MergeError(f"weight file {path.name} is missing", path=path)
    with path.open("rb") as f:
        head = f.read(8)
        if head.startswith(_LFS_MAGIC[:8]) and (head + f.read(64)).startswith(_LFS_MAGIC):
            raise _bad_header(path, "it is a Git LFS pointer, not the weights")
        if len(head) < 8:
            raise _bad_header(path, "the file is shorter than a header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise _bad_header(path, f"it declares a {length}-byte header")
        raw = f.read(length)
    if len(raw) < length:
        raise _bad_header(path, "the file is truncated inside its header")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad_header(path, f"the header is not JSON ({err})") from None
    yield from _header_tensors(path, header, 8 + length)


def _header_tensors(path: Path, header: object, data_start: int) -> Iterator[FileTensor]:
    if not isinstance(header, dict):
        raise _bad_header(path, "the header is not a JSON object")
    size = path.stat().st_size
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise _bad_header(path, f"entry {name!r} is malformed ({err!r})") from None
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
            raise _bad_header(path, f"tensor {name!r} does not fit in the file (truncated?)")
        yield FileTensor(name, shape, dtype, path, data_start + begin)


def _bad_header(path: Path, why: str) -> MergeError:
    return MergeError(
        f"cannot parse the safetensors header of {path}: {why}",
        path=path,
        hint="download the file again (with Git LFS / huggingface_hub, not a pointer file)",
    )


def _index_pickles(files: list[Path]) -> dict[str, TensorSource]:
    tensors: dict[str, TensorSource] = {}
    for path in files:
        logger.warning("loading pickle checkpoint %s with torch.load(weights_only=True)", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several kinds for bad pickles
            raise MergeError(
                f"cannot load pickle checkpoint {path} with weights_only=True ({err})",
                path=path,
                hint="convert the checkpoint to safetensors",
            ) from err
        if not isinstance(state, dict):
            raise MergeError(f"{path} does not hold a state dict", path=path)
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                tensors[name] = MemoryTensor(name, tensor.contiguous(), str(path))
    return tensors
