"""Git-like objects of the local Hub: content blobs on disk, file entries, commits.

Blobs are stored once, content-addressed by sha256 (`<root>/blobs/<aa>/<sha256>`). A file entry
carries both ids the Hub exposes: the git blob sha1 (of the content, or of the LFS pointer for
LFS files) and, for LFS files, the sha256 of the content.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pearl_bot.errors import PearlBotError

#: Files above this size are stored with LFS, like the Hub's default `.gitattributes` does.
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")

DEFAULT_GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
)


class LocalHubError(PearlBotError, LookupError):
    """A request to the local Hub cannot be served; `status` and `code` are what HTTP answers.

    `code` is the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo)
    or None for errors the Hub reports by status alone.
    """

    step = "hub"

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.headers = dict(headers or {})
        super().__init__(message)


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store `path` with LFS: a weights suffix or more than 10 MB."""
    return path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def utc_now() -> datetime:
    """Now, in UTC, to the millisecond (the Hub's timestamp precision)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime) -> str:
    """`2026-01-02T03:04:05.678Z`, the only date format the Hub client parses."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree.

    `git_oid` is the git blob sha1 the Hub reports as `oid`/`blobId`: of the content for regular
    files, of the LFS pointer for LFS files.
    """

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    @property
    def pointer_size(self) -> int:
        """Size of the LFS pointer file."""
        return len(lfs_pointer(self.sha256, self.size))


def make_entry(sha256: str, size: int, lfs: bool, data: bytes | None) -> FileEntry:
    """Build an entry; `data` is needed for regular files only (their git oid hashes it)."""
    if lfs:
        oid = git_blob_sha1(lfs_pointer(sha256, size))
    else:
        assert data is not None, "a regular file's git oid needs its content"
        oid = git_blob_sha1(data)
    return FileEntry(sha256=sha256, size=size, lfs=lfs, git_oid=oid)


@dataclass(frozen=True)
class Commit:
    """A commit: its full tree (path -> entry), parents and message."""

    id: str
    parents: tuple[str, ...]
    tree: Mapping[str, FileEntry]
    title: str
    message: str
    author: str
    date: datetime

    def as_api(self) -> dict[str, Any]:
        """The item `GET /api/models/{id}/commits/{rev}` lists."""
        return {
            "id": self.id,
            "title": self.title,
            "message": self.message,
            "authors": [{"user": self.author}],
            "date": iso(self.date),
            "parents": list(self.parents),
        }


def commit_id(
    parents: tuple[str, ...],
    tree: Mapping[str, FileEntry],
    message: str,
    author: str,
    when: datetime,
) -> str:
    """A 40-hex id over parents, tree, author, time and message, like a git commit id."""
    tree_text = "".join(f"{path}\0{entry.git_oid}\n" for path, entry in sorted(tree.items()))
    tree_hash = hashlib.sha1(tree_text.encode()).hexdigest()
    head = "".join(f"parent {p}\n" for p in parents)
    text = f"tree {tree_hash}\n{head}author {author} {when.isoformat()}\n\n{message}"
    return hashlib.sha1(text.encode()).hexdigest()


class BlobStore:
    """Content-addressed blobs on disk, named by sha256; written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob `sha256` lives (it may not exist)."""
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Size in bytes of a stored blob."""
        return self.path(sha256).stat().st_size

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> bytes:
        """The blob's bytes in `[start, end)` (to its end when `end` is None)."""
        with self.path(sha256).open("rb") as handle:
            handle.seek(start)
            return handle.read(-1 if end is None else end - start)

    def put(self, data: bytes, path: str = "") -> FileEntry:
        """Store `data` and return its entry; `path` decides LFS (suffix) or regular."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has(sha256):
            self._write(sha256, data)
        return make_entry(sha256, len(data), is_lfs_path(path, len(data)), data)

    def entry(self, sha256: str, path: str) -> FileEntry:
        """The entry of an already stored blob (an uploaded LFS object) placed at `path`."""
        size = self.size(sha256)
        lfs = is_lfs_path(path, size)
        return make_entry(sha256, size, lfs, None if lfs else self.read(sha256))

    def _write(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)


def card_data(readme: bytes | None) -> dict[str, Any] | None:
    """The YAML front matter of a README as a dict, None when absent or unreadable."""
    try:
        return front_matter(readme) if readme is not None else None
    except ValueError:
        return None


def front_matter(readme: bytes) -> dict[str, Any] | None:
    """Parse the `---` YAML block at the top of a README; ValueError when it is invalid."""
    text = readme.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration as exc:
        raise ValueError("the metadata block opened by '---' is never closed") from exc
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise ValueError(f"the metadata block is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"the metadata must be a YAML mapping, not {type(data).__name__}")
    _check_metadata(data)
    return data


_RELATIONS = ("adapter", "merge", "quantized", "finetune")


def _check_metadata(data: dict[str, Any]) -> None:
    """The few metadata rules of the Hub that the client does not check itself."""
    for key in ("base_model", "license", "tags", "datasets"):
        value = data.get(key)
        items = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(item, str) for item in items):
            raise ValueError(f'"{key}" must be a string or a list of strings, not {value!r}')
    relation = data.get("base_model_relation")
    if relation is not None and relation not in _RELATIONS:
        raise ValueError(f'"base_model_relation" must be one of {_RELATIONS}, not {relation!r}')


def safetensors_parameters(header_bytes: bytes) -> dict[str, int]:
    """Parameter count per dtype from the start of a safetensors file (empty if unreadable)."""
    if len(header_bytes) < 8:
        return {}
    (length,) = struct.unpack("<Q", header_bytes[:8])
    try:
        header = json.loads(header_bytes[8 : 8 + length])
    except ValueError:
        return {}
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        numel = 1
        for dim in info.get("shape", []):
            numel *= int(dim)
        counts[str(info.get("dtype"))] = counts.get(str(info.get("dtype")), 0) + numel
    return counts
