"""The lock: what a release was built from, published inside the release itself.

`pearl.lock.json` sits in the target repo next to the weights, so the released model records
exactly which upstream revisions (and which of their files) it was merged from, with which
recipe and numeric mode, and the sha256 of every file it published. The next run reads it back
from the target's `main` (and from the bot's open pull request) to decide whether anything
moved.

The Hub side lives here too: `read_published_lock` reads the target's state (head of `main`,
its lock, the bot's open pull request and that PR's lock), `check_upstreams` compares it with
the upstreams' current revisions, and `build_lock` records a finished merge.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.community import DiscussionComment, DiscussionWithDetails
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pearl_bot import __version__
from pearl_bot.errors import PublishError
from pearl_bot.hub_retry import describe, retry_hub_call
from pearl_bot.report import UpstreamMove

if TYPE_CHECKING:
    from pearl_bot.recipe import Recipe

logger = logging.getLogger(__name__)

LOCK_FILENAME = "pearl.lock.json"
LOCK_FORMAT = 1

#: Marks the description of the bot's own pull requests (and commits); together with the
#: author (whoami) it tells the bot's open PR apart from anyone else's.
PR_MARKER = "<!-- pearl-bot:release -->"

#: Folders never published from an output folder (git data, huggingface_hub's upload cache).
_SKIP_DIRS = frozenset({".git", ".cache"})


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

    def release_key(self) -> dict[str, Any]:
        """What identifies a release: everything but the pearl-bot version that wrote it."""
        return self.model_dump(mode="json", exclude={"pearl_bot_version"})


def same_release(new: Lock | None, old: Lock | None) -> bool:
    """Whether two locks describe the same release (same inputs, recipe and output hashes)."""
    return new is not None and old is not None and new.release_key() == old.release_key()


# --------------------------------------------------------------------------------------------
# Building the lock of a finished merge
# --------------------------------------------------------------------------------------------


def iter_output_files(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of every file a release publishes from `folder`, sorted.

    The lock itself is left out: it is written from the `Lock`, never hashed into itself.
    """
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not _SKIP_DIRS.intersection(rel.parts[:-1]):
            if rel.as_posix() != LOCK_FILENAME:
                yield rel.as_posix()


def output_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file in an output folder (except the lock), by relative path."""
    from pearl_bot.upstream import file_sha256

    folder = Path(folder)
    return {rel: file_sha256(folder / rel) for rel in iter_output_files(folder)}


def build_lock(
    recipe: Recipe, upstreams: Sequence[LockedUpstream], *, numerics: str, out_dir: str | Path
) -> Lock:
    """The lock of the release in `out_dir`, merged by `recipe` from `upstreams`.

    `upstreams` should carry the files each contributed (see `pearl_bot.download`).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise PublishError(
            f"output folder {str(out_dir)!r} does not exist", hint="run the merge first"
        )
    return Lock(
        pearl_bot_version=__version__,
        recipe_sha256=recipe.sha256,
        merge_method=recipe.merge_method,
        numerics=numerics,
        seed=recipe.build.seed,
        upstreams=tuple(upstreams),
        outputs=output_hashes(out_dir),
    )


def write_lock(lock: Lock, folder: str | Path) -> Path:
    """Write `lock` as `folder/pearl.lock.json` atomically (a temp file, then a rename)."""
    path = Path(folder) / LOCK_FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".pearl.lock.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(lock.to_json())
        # mkstemp creates the file private (0600); the lock is published, so it reads like
        # the other files of the release.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Reading the published state of the target repo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedState:
    """The target repo as a run finds it: the head to commit on and what is published there.

    `head` (of `revision`, usually `main`) is the `parent_commit` of the next commit; `pr_*`
    describe the bot's own open pull request, if any, which a new release updates.
    """

    repo_id: str
    revision: str = "main"
    exists: bool = False
    head: str | None = None
    lock: Lock | None = None
    pr_num: int | None = None
    pr_url: str | None = None
    pr_head: str | None = None
    pr_lock: Lock | None = None
    #: The id of the PR's first comment (its description), which an update edits.
    pr_comment_id: str | None = None

    @property
    def pr_revision(self) -> str | None:
        return None if self.pr_num is None else f"refs/pr/{self.pr_num}"

    @property
    def latest_lock(self) -> Lock | None:
        """The newest lock the bot published: its open PR's, else the one on `revision`."""
        return self.pr_lock if self.pr_lock is not None else self.lock

    @property
    def lock_source(self) -> str | None:
        """Where `latest_lock` comes from, for people: `pr#3` or `main@0123abcd4567`."""
        if self.pr_lock is not None:
            return f"pr#{self.pr_num}"
        if self.lock is not None and self.head is not None:
            return f"{self.revision}@{self.head[:12]}"
        return None


def read_published_lock(
    repo_id: str, *, api: HfApi | None = None, token: str | None = None, revision: str = "main"
) -> PublishedState:
    """Read the target repo: head of `revision`, its lock, the bot's open PR and that PR's lock.

    A repo that does not exist yet gives `exists=False` and no lock.
    """
    api = api or HfApi(token=token)
    head = branch_head(api, repo_id, revision)
    if head is None:
        exists = revision != "main" and branch_head(api, repo_id, "main") is not None
        return PublishedState(repo_id=repo_id, revision=revision, exists=exists)
    lock = read_lock_at(api, repo_id, head)
    state = PublishedState(repo_id=repo_id, revision=revision, exists=True, head=head, lock=lock)
    pr = find_bot_pr(api, repo_id, revision)
    if pr is None:
        return state
    pr_head = branch_head(api, repo_id, f"refs/pr/{pr.num}")
    return replace(
        state,
        pr_num=pr.num,
        pr_url=pr.url,
        pr_head=pr_head,
        pr_lock=read_lock_at(api, repo_id, pr_head) if pr_head else None,
        pr_comment_id=_first_comment_id(pr),
    )


def branch_head(api: HfApi, repo_id: str, revision: str) -> str | None:
    """The commit sha `revision` of `repo_id` points at; None if the repo or ref is missing."""
    try:
        info = retry_hub_call(
            lambda: api.model_info(repo_id, revision=revision, expand=["sha"]),
            what=f"model_info({repo_id!r}, revision={revision!r})",
        )
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise _target_error(err, repo_id, "read the head of " + revision) from err
    if info.id != repo_id:
        logger.warning("target %s now redirects to %s; update publish.repo_id", repo_id, info.id)
    return info.sha


def read_lock_at(api: HfApi, repo_id: str, revision: str) -> Lock | None:
    """The lock published in `repo_id` at commit `revision`; None when absent or unreadable."""
    try:
        path = api.hf_hub_download(repo_id, LOCK_FILENAME, revision=revision)
    except RemoteEntryNotFoundError:  # not LocalEntryNotFoundError: that one hides a 5xx
        return None
    except (HfHubHTTPError, httpx2.TransportError, OSError) as err:
        raise _target_error(err, repo_id, f"read {LOCK_FILENAME} at {revision[:12]}") from err
    try:
        return Lock.read(path)
    except (ValidationError, ValueError) as err:
        # A broken lock must not block the bot forever: treat the release as unlocked, so the
        # next release rebuilds everything and publishes a valid lock again.
        logger.warning("ignoring unreadable %s in %s@%s: %s", LOCK_FILENAME, repo_id, revision, err)
        return None


def bot_name(api: HfApi) -> str | None:
    """The user the token belongs to (`whoami`), or None without a usable token."""
    try:
        info = retry_hub_call(lambda: api.whoami(), what="whoami()")
    except (LocalTokenNotFoundError, HfHubHTTPError, httpx2.TransportError) as err:
        logger.info("no Hub identity (%s); matching pull requests by marker only", describe(err))
        return None
    name = info.get("name")
    return name if isinstance(name, str) else None


def find_bot_pr(api: HfApi, repo_id: str, revision: str = "main") -> DiscussionWithDetails | None:
    """The bot's newest open pull request against `revision`: its author and its marker."""
    author = bot_name(api)
    try:
        for num in _open_pr_numbers(api, repo_id, author):
            details = retry_hub_call(
                lambda: api.get_discussion_details(repo_id, num),  # noqa: B023 (called at once)
                what=f"get_discussion_details({repo_id!r}, {num})",
            )
            if _is_bot_pr(details, author, revision):
                return details
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise _target_error(err, repo_id, "list its open pull requests") from err
    return None


def _open_pr_numbers(api: HfApi, repo_id: str, author: str | None) -> list[int]:
    """Numbers of the open pull requests on `repo_id` (by `author` if known), newest first."""
    listed = retry_hub_call(
        lambda: list(
            api.get_repo_discussions(
                repo_id, author=author, discussion_type="pull_request", discussion_status="open"
            )
        ),
        what=f"get_repo_discussions({repo_id!r})",
    )
    return sorted((d.num for d in listed), reverse=True)


def _is_bot_pr(details: DiscussionWithDetails, author: str | None, revision: str) -> bool:
    if author is not None and details.author != author:
        return False
    if details.target_branch not in (revision, f"refs/heads/{revision}"):
        return False
    first = next((e for e in details.events if isinstance(e, DiscussionComment)), None)
    return first is not None and PR_MARKER in first.content


def _first_comment_id(details: DiscussionWithDetails) -> str | None:
    first = next((e for e in details.events if isinstance(e, DiscussionComment)), None)
    return None if first is None else first.id


def _target_error(err: BaseException, repo_id: str, action: str) -> PublishError:
    return PublishError(
        f"cannot {action} of target repo {repo_id!r}: {describe(err)}",
        repo_id=repo_id,
        hint="check publish.repo_id and that HF_TOKEN can read it, then rerun",
    )


# --------------------------------------------------------------------------------------------
# `pearl-bot check`
# --------------------------------------------------------------------------------------------


def compare_upstreams(lock: Lock | None, current: Sequence[LockedUpstream]) -> list[UpstreamMove]:
    """Each current upstream next to its locked revision (None when not in the lock)."""
    moves = []
    for up in current:
        locked = lock.upstream(up.key) if lock is not None else None
        moves.append(
            UpstreamMove(
                key=up.key,
                repo_id=up.repo_id,
                tracked=up.tracked,
                locked=locked.revision if locked is not None else None,
                current=up.revision,
            )
        )
    return moves


def upstream_changed(recipe: Recipe, lock: Lock | None, current: Sequence[LockedUpstream]) -> bool:
    """Whether a rebuild is due: no lock, another recipe, or an upstream that moved."""
    if lock is None or lock.recipe_sha256 != recipe.sha256:
        return True
    return any(move.moved for move in compare_upstreams(lock, current))


@dataclass
class CheckReport:
    """What `pearl-bot check` found: per upstream, the locked and the current revision."""

    recipe: str
    repo_id: str | None
    upstreams: list[UpstreamMove] = field(default_factory=list)
    #: Where the lock came from (`main@<sha>`, `pr#3`), None when nothing is published.
    lock_source: str | None = None
    recipe_changed: bool = False

    @property
    def moved(self) -> list[UpstreamMove]:
        return [u for u in self.upstreams if u.moved]

    @property
    def changed(self) -> bool:
        """Whether a rebuild is due (something moved, or the recipe or the lock is new)."""
        return self.recipe_changed or bool(self.moved)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for item, move in zip(data["upstreams"], self.upstreams, strict=True):
            item["moved"] = move.moved
        data["changed"] = self.changed
        return data

    def summary(self) -> str:
        """A few lines for a terminal."""
        source = self.lock_source or "nothing published yet"
        lines = [f"{self.recipe} -> {self.repo_id or '(no publish.repo_id)'} (lock: {source})"]
        for up in self.upstreams:
            state = "new" if up.locked is None else ("moved" if up.moved else "unchanged")
            old = (up.locked or "none")[:12]
            lines.append(f"  {up.key}: {state} ({old} -> {up.current[:12]})")
        if self.recipe_changed and self.lock_source:
            lines.append("  the recipe changed since the published lock")
        verdict = "a rebuild is due" if self.changed else "up to date"
        lines.append(f"{len(self.moved)} of {len(self.upstreams)} upstreams moved: {verdict}")
        return "\n".join(lines)


def check_upstreams(recipe: Recipe, *, token: str | None = None) -> CheckReport:
    """Resolve every upstream (one call each) and compare with the target's published lock."""
    # Imported here: pearl_bot.upstream imports this module for the lock records.
    from pearl_bot.upstream import resolve_revisions

    api = HfApi(token=token)
    current = resolve_revisions(recipe, api=api)
    publish = recipe.publish
    state = (
        read_published_lock(publish.repo_id, api=api, revision=publish.revision)
        if publish is not None
        else None
    )
    lock = state.latest_lock if state is not None else None
    return CheckReport(
        recipe=str(recipe.path) if recipe.path is not None else "<recipe>",
        repo_id=publish.repo_id if publish is not None else None,
        upstreams=compare_upstreams(lock, current),
        lock_source=state.lock_source if state is not None else None,
        recipe_changed=lock is None or lock.recipe_sha256 != recipe.sha256,
    )
