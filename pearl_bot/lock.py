"""The lock: what a release was built from, published inside the release itself.

`pearl.lock.json` sits in the target repo next to the weights, so the released model records
exactly which upstream revisions (and which of their files) it was merged from, with which
recipe and numeric mode, and the sha256 of every file it published. The next run reads it back
from the target's `main` (and from the bot's open pull request) to decide whether anything
moved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LOCK_FILENAME = "pearl.lock.json"
LOCK_FORMAT = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LockedFile(_Frozen):
    """One file an upstream contributed to the merge."""

    path: str
    size: int
    #: sha256 of the content for LFS files and local files; the git blob sha1 otherwise.
    sha256: str | None = None
    blob_id: str | None = None


class LockedUpstream(_Frozen):
    """One upstream model, resolved to an immutable revision."""

    #: The reference as written in the recipe (`org/name`, `org/name@v2`, `./local`).
    key: str
    #: The canonical Hub repo id after renames; None for a local folder.
    repo_id: str | None = None
    #: The ref the recipe tracks (`main`, a branch or tag, or a pinned sha); None when local.
    tracked: str | None = None
    #: A full 40-hex commit sha for Hub models; `sha256:<hex>` content hash for local folders.
    revision: str
    role: Literal["base", "model"] = "model"
    files: tuple[LockedFile, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.repo_id is None


class Lock(_Frozen):
    """The full lock of one release."""

    format: int = LOCK_FORMAT
    pearl_bot_version: str
    recipe_sha256: str
    merge_method: str
    numerics: str
    seed: int = 0
    upstreams: tuple[LockedUpstream, ...]
    #: sha256 of every file the release published (weights, index, config, tokenizer, card...),
    #: except the lock itself.
    outputs: dict[str, str] = Field(default_factory=dict)

    def upstream(self, key: str) -> LockedUpstream | None:
        """The locked upstream written as `key` in the recipe, if any."""
        return next((u for u in self.upstreams if u.key == key), None)

    def to_json(self) -> str:
        """Stable JSON: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Lock:
        return cls.model_validate_json(text)

    @classmethod
    def read(cls, path: str | Path) -> Lock:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
