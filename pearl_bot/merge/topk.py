"""The first-k set of torch's CPU descending argsort of integer keys, in O(n), via a small C file.

torch sorts a CPU row of int16 (and, without x86-simd-sort, int32) keys with libstdc++'s
`std::sort` on (key, index) pairs; which tied keys land among the first k depends only on the
introsort partitions of the ranges holding position k. `_topk.c` replays just those (see its
header), which reproduces `argsort(keys, descending=True)[:k]` as a set, ties included.

The C file ships with the package and is compiled at first use with the system compiler into
a per-user cache keyed by its hash, then loaded with ctypes (which releases the GIL, so rows run
in threads). Without a compiler the caller keeps its argsort path; a row whose introsort would
reach the heapsort depth limit returns None and is argsorted by the caller as well.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: The C compiler command; the build is skipped (argsort path) when it is missing.
COMPILER = os.environ.get("CC", "cc")
_SOURCE = Path(__file__).with_name("_topk.c")
_WIDTHS = {torch.int16: 2, torch.int32: 4}


def topk_mask(keys: torch.Tensor, k: int) -> torch.Tensor | None:
    """Mask of `torch.argsort(keys, descending=True)[:k]` for a 1-D int16/int32 row.

    None when the C helper is unavailable or introsort would heapsort on this row's path.
    """
    n = keys.numel()
    if k >= n or k <= 0:
        return torch.full((n,), k > 0, dtype=torch.bool)
    lib = load_library()
    if lib is None or keys.dtype not in _WIDTHS or keys.dim() != 1:
        return None
    keys = keys.contiguous()
    mask = torch.empty(n, dtype=torch.bool)
    code = lib.topk_mask(keys.data_ptr(), _WIDTHS[keys.dtype], n, k, mask.data_ptr())
    if code != 0:
        logger.debug("topk: C helper returned %d for n=%d, k=%d; argsort instead", code, n, k)
        return None
    return mask


def available() -> bool:
    """Whether the C helper could be built and loaded here."""
    return load_library() is not None


@functools.cache
def load_library() -> ctypes.CDLL | None:
    """Build (once per source hash) and load the helper; None, logged at debug, on failure."""
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + COMPILER.encode()).hexdigest()[:16]
    target = _cache_dir() / f"topk-{digest}.so"
    try:
        if not target.exists():
            _compile(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("topk: C helper unavailable (%s); using argsort", exc)
        return None
    lib.topk_mask.restype = ctypes.c_int
    lib.topk_mask.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return lib


def _compile(target: Path) -> None:
    """Compile `_topk.c` to `target`, atomically (a temp file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        command = [COMPILER, "-O2", "-shared", "-fPIC", "-o", tmp, str(_SOURCE)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pearl-bot"
