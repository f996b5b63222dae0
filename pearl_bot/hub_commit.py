"""The one commit of a release, made safely: never clobbered, never duplicated.

huggingface_hub POSTs a commit once and does not retry it, and a commit whose answer was lost
(a 5xx, a dropped connection) may still have landed. So after any failure this module first
looks for the release on the Hub (the lock at the new head, or the bot's open PR holding it)
and only then tries again, with the same `parent_commit`, within the retry budget:

- 429 / 5xx / lost connection: landed -> done; else wait as the Hub asks and retry, or stop
  with a message that says when to rerun once the wait exceeds the budget.
- 412 (a commit happened since the run started): landed -> done; when the new commits only
  touched files this release rewrites anyway (the bot's own), commit again on the new head,
  once; otherwise stop, naming the commit and the files, and publish nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Literal

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError

from pearl_bot.errors import PublishError
from pearl_bot.hub_retry import (
    RetryPolicy,
    describe,
    is_transient,
    next_wait,
    retry_hub_call,
    status_of,
)
from pearl_bot.lock import Lock, branch_head, find_bot_pr, read_lock_at, same_release

logger = logging.getLogger(__name__)

Status = Literal["committed", "pr-opened", "pr-updated", "no-change"]
Operation = CommitOperationAdd | CommitOperationDelete


@dataclass(frozen=True)
class Target:
    """Where a commit goes: a branch, a new PR against a branch, or an open PR's ref."""

    #: The branch (or `refs/pr/N`) the commit is made on; the PR base when `create_pr`.
    revision: str
    create_pr: bool
    #: The head the run started from; the commit's `parent_commit`.
    parent: str | None
    status: Status


@dataclass(frozen=True)
class CommitPlan:
    """Everything one commit carries, and which paths the bot owns in the target."""

    repo_id: str
    operations: list[Operation]
    title: str
    description: str
    lock: Lock | None
    #: Paths this release writes or removes; commits touching only these may be overwritten.
    own_paths: frozenset[str]


@dataclass(frozen=True)
class Landed:
    """A commit that is on the Hub: the new revision, with its PR when one was opened."""

    status: Status
    oid: str
    commit_url: str | None = None
    pr_url: str | None = None
    pr_num: int | None = None


def commit_release(api: HfApi, plan: CommitPlan, target: Target) -> Landed:
    """Make the commit of `plan` on `target`, checking the Hub before any second try."""
    policy = RetryPolicy.from_env()
    waited, rebased = 0.0, False
    for attempt in range(1, policy.attempts + 1):
        try:
            return _create_commit(api, plan, target)
        except (HfHubHTTPError, httpx2.TransportError) as err:
            landed = find_landed(api, plan, target)
            if landed is not None:
                logger.warning("the commit answered %s but landed as %s", describe(err), landed.oid)
                return landed
            if status_of(err) == 412 and not rebased:
                target, rebased = rebase(api, plan, target), True
                continue
            wait = next_wait(err, attempt, policy)
            if not is_transient(err) or attempt == policy.attempts:
                raise _commit_error(plan, target, err) from err
            if waited + wait > policy.max_wait:
                raise _commit_error(plan, target, err, wait=wait) from err
            logger.warning("commit to %s: %s; retrying in %gs", plan.repo_id, describe(err), wait)
            time.sleep(wait)
            waited += wait
    raise AssertionError("unreachable: the last attempt returns or raises")


def _create_commit(api: HfApi, plan: CommitPlan, target: Target) -> Landed:
    info = api.create_commit(
        plan.repo_id,
        plan.operations,
        commit_message=plan.title,
        commit_description=plan.description,
        revision=target.revision,
        create_pr=target.create_pr,
        parent_commit=target.parent,
    )
    # huggingface_hub makes no commit when every file is already on the Hub as is.
    status = "no-change" if info.oid == target.parent else target.status
    return Landed(status, info.oid, info.commit_url, info.pr_url, info.pr_num)


def find_landed(api: HfApi, plan: CommitPlan, target: Target) -> Landed | None:
    """The release of `plan` if it is on the Hub already (found by its lock, else its title)."""
    try:
        if target.create_pr:
            return _landed_in_pr(api, plan, target)
        head = branch_head(api, plan.repo_id, target.revision)
        if head is None or head == target.parent or not _holds(api, plan, head, target.revision):
            return None
    except (PublishError, HfHubHTTPError, httpx2.TransportError) as err:
        raise PublishError(
            f"the commit to {plan.repo_id!r} failed and its outcome cannot be checked ({err})",
            repo_id=plan.repo_id,
            hint=f"look at the repo's history before rerunning; target {target.revision!r}",
        ) from err
    return Landed(target.status, head, commit_url=f"{_repo_url(api, plan)}/commit/{head}")


def _landed_in_pr(api: HfApi, plan: CommitPlan, target: Target) -> Landed | None:
    pr = find_bot_pr(api, plan.repo_id, target.revision)
    if pr is None:
        return None
    head = branch_head(api, plan.repo_id, f"refs/pr/{pr.num}")
    if head is None or not _holds(api, plan, head, f"refs/pr/{pr.num}"):
        return None
    url = f"{_repo_url(api, plan)}/commit/{head}"
    return Landed("pr-opened", head, commit_url=url, pr_url=pr.url, pr_num=pr.num)


def _holds(api: HfApi, plan: CommitPlan, head: str, revision: str) -> bool:
    """Whether commit `head` is this release: same lock, or (without a lock) same title."""
    if plan.lock is not None:
        return same_release(plan.lock, read_lock_at(api, plan.repo_id, head))
    commits = retry_hub_call(
        lambda: api.list_repo_commits(plan.repo_id, revision=revision),
        what=f"list_repo_commits({plan.repo_id!r})",
    )
    return bool(commits) and commits[0].commit_id == head and commits[0].title == plan.title


def rebase(api: HfApi, plan: CommitPlan, target: Target) -> Target:
    """After a 412: the target on its new head, if only the bot's own files changed there."""
    head = branch_head(api, plan.repo_id, target.revision)
    if head is None or target.parent is None:
        raise PublishError(
            f"target {plan.repo_id!r} lost its {target.revision!r} during the run",
            repo_id=plan.repo_id,
            hint="nothing was published; check the repo and rerun",
        )
    foreign = sorted(changed_paths(api, plan.repo_id, target.parent, head) - plan.own_paths)
    if foreign:
        raise PublishError(
            f"target {plan.repo_id!r} changed since the run started: {target.revision} moved "
            f"from {target.parent[:12]} to {head[:12]}, touching {', '.join(foreign[:5])}",
            repo_id=plan.repo_id,
            revision=head,
            hint="nothing was published; rerun pearl-bot to release on the new head",
        )
    logger.warning(
        "%s moved to %s, touching only pearl-bot's files; committing on it", target.revision, head
    )
    return replace(target, parent=head)


def changed_paths(api: HfApi, repo_id: str, old: str, new: str) -> set[str]:
    """Paths that differ (added, removed or changed content) between two commits."""
    before, after = file_ids(api, repo_id, old), file_ids(api, repo_id, new)
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def file_ids(api: HfApi, repo_id: str, revision: str) -> dict[str, str | None]:
    """Every file of `repo_id` at `revision`, with its LFS sha256 or git blob id."""
    info = retry_hub_call(
        lambda: api.model_info(repo_id, revision=revision, files_metadata=True),
        what=f"model_info({repo_id!r}, revision={revision[:12]!r}, files_metadata=True)",
    )
    return {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings or ()}


def _repo_url(api: HfApi, plan: CommitPlan) -> str:
    return f"{api.endpoint}/{plan.repo_id}"


def _commit_error(
    plan: CommitPlan, target: Target, err: BaseException, *, wait: float | None = None
) -> PublishError:
    where = f"{plan.repo_id!r} ({target.revision})"
    if status_of(err) == 412:
        hint = "nothing was published; rerun pearl-bot to release on the new head"
    elif wait is not None:
        hint = f"nothing was published; rerun in {wait:g} s or more (the Hub asked to wait)"
    else:
        hint = "nothing was published; rerun later (files already uploaded are not sent again)"
    return PublishError(
        f"the commit to {where} failed: {describe(err)}",
        repo_id=plan.repo_id,
        revision=target.parent,
        hint=hint,
    )
