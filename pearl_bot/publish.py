"""Publish a release to its target repo: one atomic commit, or one Hub pull request revision.

The weights, index, config, tokenizer, card, recipe and lock of a release reach the Hub in a
single commit with `parent_commit` set to the head the run started from, so a commit made
since is never clobbered and nothing is ever half-published. Large files are preuploaded
first, one at a time (a rerun after an interrupted upload skips what the Hub already has),
then one small commit references them (`pearl_bot.hub_commit` makes it safely).

With `create_pr`, the release opens a pull request, or, when the bot already has one open on
the target, becomes a new revision of that PR (`refs/pr/N`) with an updated description. A
release whose lock is already published (on the branch, or in the open PR) is a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError

from pearl_bot import __version__
from pearl_bot.errors import PublishError
from pearl_bot.hub_commit import CommitPlan, Landed, Status, Target, commit_release, file_ids
from pearl_bot.hub_retry import describe, retry_hub_call, status_of
from pearl_bot.lock import (
    LOCK_FILENAME,
    PR_MARKER,
    Lock,
    PublishedState,
    branch_head,
    compare_upstreams,
    iter_output_files,
    read_published_lock,
    same_release,
)
from pearl_bot.upstream import file_sha256

logger = logging.getLogger(__name__)

#: Files at least this large, and every weight file, are preuploaded before the commit.
PREUPLOAD_MIN_BYTES = 10 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class PublishResult:
    """What a publish did: a commit, a PR opened or updated, or nothing (`no-change`)."""

    repo_id: str
    status: Status
    #: The new commit sha (the current head when nothing changed).
    revision: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    pr_num: int | None = None
    #: Files of the commit: path -> size in bytes.
    files: dict[str, int] = field(default_factory=dict)
    commit_message: str | None = None
    tag: str | None = None

    @property
    def changed(self) -> bool:
        return self.status != "no-change"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"changed": self.changed}

    def summary(self) -> str:
        """A few lines for a terminal: status, revision, URLs."""
        lines = [f"{self.repo_id}: {self.status} at {(self.revision or 'no revision')[:12]}"]
        if self.commit_message:
            lines.append(f"  {self.commit_message}")
        labels = (("commit", self.commit_url), ("pull request", self.pr_url), ("tag", self.tag))
        lines += [f"  {label}: {value}" for label, value in labels if value]
        if self.files:
            size = sum(self.files.values())
            lines.append(f"  files: {len(self.files)} ({size / 1e6:.1f} MB)")
        return "\n".join(lines)


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    create_pr: bool,
    private: bool,
    commit_message: str | None = None,
    token: str | None = None,
) -> PublishResult:
    """Publish a model folder (`pearl-bot publish DIR --repo ...`), with its lock if it has one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{str(folder)!r} is not a folder", hint="pass the model folder to push")
    lock = _folder_lock(folder)
    previous = read_published_lock(repo_id, token=token)
    return push_revision(
        folder,
        repo_id,
        lock=lock,
        previous=previous,
        create_pr=create_pr,
        private=private,
        commit_message=commit_message,
        token=token,
    )


def _folder_lock(folder: Path) -> Lock | None:
    path = folder / LOCK_FILENAME
    if not path.exists():
        return None
    try:
        return Lock.read(path)
    except ValueError as err:
        raise PublishError(
            f"{path} is not a valid pearl-bot lock: {str(err).splitlines()[0]}",
            hint="rebuild the folder with `pearl-bot run`, or delete the lock file",
        ) from err


def push_revision(
    out_dir: str | Path,
    repo_id: str,
    *,
    lock: Lock | None,
    previous: PublishedState,
    create_pr: bool,
    private: bool,
    revision: str = "main",
    tag: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | None = None,
) -> PublishResult:
    """Push the release in `out_dir` to `repo_id` as one commit on `revision` or as a PR.

    `previous` is the target as the run found it (`read_published_lock`): its head becomes the
    `parent_commit`, its lock names what moved, and an open bot PR gets the new revision.
    """
    api = HfApi(token=token)
    out_dir = Path(out_dir)
    if _already_published(lock, previous, create_pr):
        return _unchanged(api, previous, lock, out_dir)
    additions = plan_additions(out_dir, lock)
    previous = _ensure_repo(api, previous, revision, private)
    target = _target(previous, create_pr, revision)
    # Against the branch's lock even for a PR: the PR's diff is against the branch too.
    title, description = commit_text(lock, previous.lock, commit_message, commit_description)
    plan = CommitPlan(
        repo_id=repo_id,
        operations=[*additions, *_stale_files(api, previous, target, additions)],
        title=title,
        description=description,
        lock=lock,
        own_paths=_own_paths(additions, previous),
    )
    preupload(api, repo_id, additions, target)
    landed = commit_release(api, plan, target)
    logger.info("%s %s: %s", repo_id, landed.status, landed.commit_url)
    if landed.status == "pr-updated":
        _update_pr(api, previous, title, description)
    return _result(api, repo_id, landed, previous, additions, title, tag)


def _already_published(lock: Lock | None, previous: PublishedState, create_pr: bool) -> bool:
    """Whether this exact release is on the branch already, or (for PRs) in the bot's open PR."""
    if same_release(lock, previous.lock):
        return True
    return create_pr and same_release(lock, previous.pr_lock)


def _unchanged(
    api: HfApi, previous: PublishedState, lock: Lock | None, out_dir: Path
) -> PublishResult:
    in_pr = not same_release(lock, previous.lock)  # then it is the open PR that holds it
    revision = previous.pr_head if in_pr else previous.head
    logger.info("%s already holds this release (%s); no commit", previous.repo_id, revision)
    return PublishResult(
        repo_id=previous.repo_id,
        status="no-change",
        revision=revision,
        commit_url=f"{api.endpoint}/{previous.repo_id}/commit/{revision}" if revision else None,
        pr_url=previous.pr_url if in_pr else None,
        pr_num=previous.pr_num if in_pr else None,
        files=_sizes(out_dir),
    )


def plan_additions(out_dir: Path, lock: Lock | None) -> list[CommitOperationAdd]:
    """One addition per output file, plus the lock; the files must match the lock's hashes."""
    if not out_dir.is_dir():
        raise PublishError(f"output folder {str(out_dir)!r} does not exist", hint="merge first")
    paths = list(iter_output_files(out_dir))
    if lock is not None:
        _check_outputs(out_dir, paths, lock)
    additions = [CommitOperationAdd(p, str(out_dir / p)) for p in paths]
    if lock is not None:
        additions.append(CommitOperationAdd(LOCK_FILENAME, lock.to_json().encode()))
    if not additions:
        raise PublishError(f"output folder {str(out_dir)!r} is empty", hint="merge first")
    return additions


def _check_outputs(out_dir: Path, paths: list[str], lock: Lock) -> None:
    """Refuse to publish a folder that is not exactly what its lock describes."""
    extra, missing = set(paths) - set(lock.outputs), set(lock.outputs) - set(paths)
    changed = [
        p for p in paths if p in lock.outputs and file_sha256(out_dir / p) != lock.outputs[p]
    ]
    problems = sorted(extra | missing) + changed
    if problems:
        raise PublishError(
            f"output folder {str(out_dir)!r} does not match its lock: {', '.join(problems[:5])} "
            f"({len(extra)} unlisted, {len(missing)} missing, {len(changed)} changed)",
            hint="the merge output is incomplete or was edited: rebuild it; nothing was published",
        )


def _ensure_repo(
    api: HfApi, previous: PublishedState, revision: str, private: bool
) -> PublishedState:
    """Create the target repo when missing; the state then has a head to commit on."""
    if previous.revision != revision:
        raise PublishError(
            f"the published state was read at {previous.revision!r}, not at {revision!r}",
            repo_id=previous.repo_id,
            hint=f"call read_published_lock(..., revision={revision!r})",
        )
    if previous.exists and previous.head is not None:
        return previous
    repo_id = previous.repo_id
    try:
        retry_hub_call(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True),
            what=f"create_repo({repo_id!r})",
        )
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise PublishError(
            f"cannot create target repo {repo_id!r}: {describe(err)}",
            repo_id=repo_id,
            hint="check that HF_TOKEN has write access to the namespace",
        ) from err
    logger.info("created %s repo %s", "private" if private else "public", repo_id)
    return replace(previous, exists=True, head=branch_head(api, repo_id, revision))


def _target(previous: PublishedState, create_pr: bool, revision: str) -> Target:
    if not create_pr:
        return Target(revision, False, previous.head, "committed")
    if previous.pr_revision is not None and previous.pr_head is not None:
        return Target(previous.pr_revision, False, previous.pr_head, "pr-updated")
    return Target(revision, True, previous.head, "pr-opened")


def _own_paths(additions: list[CommitOperationAdd], previous: PublishedState) -> frozenset[str]:
    """Paths this release writes, plus everything earlier releases published."""
    paths = {op.path_in_repo for op in additions} | {LOCK_FILENAME}
    for lock in (previous.lock, previous.pr_lock):
        if lock is not None:
            paths |= set(lock.outputs)
    return frozenset(paths)


def _stale_files(
    api: HfApi, previous: PublishedState, target: Target, additions: list[CommitOperationAdd]
) -> list[CommitOperationDelete]:
    """Files an earlier release published that this one no longer has (fewer shards...)."""
    old = previous.pr_lock if target.status == "pr-updated" else previous.lock
    new = {op.path_in_repo for op in additions}
    stale = set(old.outputs) - new if old is not None else set()
    if not stale or target.parent is None:
        return []
    present = file_ids(api, previous.repo_id, target.parent)
    return [CommitOperationDelete(p) for p in sorted(stale) if p in present]


def preupload(
    api: HfApi, repo_id: str, additions: list[CommitOperationAdd], target: Target
) -> None:
    """Upload the large files one at a time before the commit; the Hub skips those it has."""
    for op in additions:
        if not _is_large(op):
            continue
        logger.debug("preuploading %s (%d bytes)", op.path_in_repo, op.upload_info.size)
        try:
            api.preupload_lfs_files(
                repo_id, [op], revision=target.revision, create_pr=target.create_pr
            )
        except (HfHubHTTPError, httpx2.TransportError, ValueError, RuntimeError) as err:
            # huggingface_hub wraps a failed LFS upload in a RuntimeError; the cause says why.
            cause = err.__cause__ if isinstance(err, RuntimeError) and err.__cause__ else err
            raise PublishError(
                f"uploading {op.path_in_repo} to {repo_id!r} failed: {describe(cause)}",
                repo_id=repo_id,
                hint="nothing was committed; rerun (files the Hub already has are not re-sent)",
            ) from err


def _is_large(op: CommitOperationAdd) -> bool:
    size = op.upload_info.size
    return op.path_in_repo.endswith(_WEIGHT_SUFFIXES) or size >= PREUPLOAD_MIN_BYTES


def commit_text(
    lock: Lock | None,
    previous: Lock | None,
    title: str | None = None,
    description: str | None = None,
) -> tuple[str, str]:
    """Commit (and PR) title and description, naming what moved since `previous`."""
    lines = [PR_MARKER, ""]
    if description:
        lines += [description, ""]
    if lock is None:
        lines.append(f"Published by pearl-bot {__version__}.")
        return title or "pearl-bot: publish model folder", "\n".join(lines)
    moves = compare_upstreams(previous, lock.upstreams)
    for move in moves:
        name = f"`{move.repo_id or move.key}`"
        new = move.current[:12]
        if move.locked is None:
            lines.append(f"- {name}: new at {new}")
        elif move.moved:
            lines.append(f"- {name}: moved from {move.locked[:12]} to {new}")
        else:
            lines.append(f"- {name}: unchanged at {new}")
    lines += ["", f"Recipe sha256 {lock.recipe_sha256[:12]}, merged by pearl-bot {__version__}."]
    return title or _default_title(moves, previous), "\n".join(lines)


def _default_title(moves: list[Any], previous: Lock | None) -> str:
    moved = [m for m in moves if m.moved]
    if previous is None:
        return f"pearl-bot: release merged from {len(moves)} upstreams"
    if len(moved) == 1:
        m = moved[0]
        old = (m.locked or "none")[:7]
        return f"pearl-bot: {m.repo_id or m.key} moved from {old} to {m.current[:7]}"
    if moved:
        names = ", ".join(m.repo_id or m.key for m in moved)
        return f"pearl-bot: {len(moved)} upstreams moved ({names})"[:200]
    return "pearl-bot: rebuild (recipe or pearl-bot changed)"


def _update_pr(api: HfApi, previous: PublishedState, title: str, description: str) -> None:
    """Point the open PR's title and description at the new revision (best effort)."""
    num, repo_id = previous.pr_num, previous.repo_id
    assert num is not None
    try:
        retry_hub_call(
            lambda: api.rename_discussion(repo_id, num, title),
            what=f"rename_discussion({repo_id!r}, {num})",
        )
        _edit_description(api, repo_id, num, previous.pr_comment_id, description)
    except (HfHubHTTPError, httpx2.TransportError) as err:
        logger.warning("PR #%d got the new revision, but its text was not updated: %s", num, err)


def _edit_description(
    api: HfApi, repo_id: str, num: int, comment_id: str | None, description: str
) -> None:
    """Edit the PR's first comment; where that cannot be edited, add the text as a comment."""
    if comment_id is not None:
        try:
            retry_hub_call(
                lambda: api.edit_discussion_comment(repo_id, num, comment_id, description),
                what=f"edit_discussion_comment({repo_id!r}, {num})",
            )
            return
        except HfHubHTTPError as err:
            if status_of(err) not in (403, 404, 405):
                raise
            logger.warning("cannot edit the description of PR #%d (%s); commenting", num, err)
    retry_hub_call(
        lambda: api.comment_discussion(repo_id, num, description),
        what=f"comment_discussion({repo_id!r}, {num})",
    )


def _result(
    api: HfApi,
    repo_id: str,
    landed: Landed,
    previous: PublishedState,
    additions: list[CommitOperationAdd],
    title: str,
    tag: str | None,
) -> PublishResult:
    in_pr = landed.status in ("pr-opened", "pr-updated")
    pr_num = landed.pr_num if landed.status == "pr-opened" else previous.pr_num
    return PublishResult(
        repo_id=repo_id,
        status=landed.status,
        revision=landed.oid,
        commit_url=landed.commit_url,
        pr_url=(landed.pr_url or previous.pr_url) if in_pr else None,
        pr_num=pr_num if in_pr else None,
        files={op.path_in_repo: op.upload_info.size for op in additions},
        commit_message=title,
        tag=_tag(api, repo_id, tag, landed) if landed.status == "committed" else None,
    )


def expand_tag(template: str, oid: str, *, now: dt.datetime | None = None) -> str:
    """`publish.tag` with `{date}` (UTC, YYYYMMDD) and `{short_sha}` substituted."""
    now = now or dt.datetime.now(dt.UTC)
    return template.replace("{date}", now.strftime("%Y%m%d")).replace("{short_sha}", oid[:7])


def _tag(api: HfApi, repo_id: str, template: str | None, landed: Landed) -> str | None:
    """Tag the new commit; a failure is a warning, since the release itself is out."""
    if template is None:
        return None
    name = expand_tag(template, landed.oid)
    try:
        retry_hub_call(
            lambda: api.create_tag(repo_id, tag=name, revision=landed.oid),
            what=f"create_tag({repo_id!r}, {name!r})",
        )
    except (HfHubHTTPError, httpx2.TransportError) as err:
        exists = " (it already exists)" if status_of(err) == 409 else ""
        logger.warning("released %s but could not tag it %r%s: %s", landed.oid, name, exists, err)
        return None
    return name


def _sizes(out_dir: Path) -> dict[str, int]:
    return {p: (out_dir / p).stat().st_size for p in iter_output_files(out_dir)}
