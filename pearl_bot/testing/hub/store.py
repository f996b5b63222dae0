"""The local Hub's state: repos with branches, tags, PR refs, commits and discussions.

Every method takes the store's lock, so HTTP handler threads and the test's own seeding calls
see one consistent history. Commits are applied atomically: the new commit is built in full,
then the ref moves, so no reader ever sees half a commit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pearl_bot.testing.hub.objects import (
    DEFAULT_GITATTRIBUTES,
    BlobStore,
    Commit,
    FileEntry,
    LocalHubError,
    commit_id,
    iso,
    utc_now,
)

Gated = Literal[False, "auto", "manual"]
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
STALE_PARENT_MESSAGE = "A commit has happened since. Please refresh and try again."


@dataclass
class Discussion:
    """A discussion or pull request; PRs own the ref `refs/pr/<num>`."""

    num: int
    title: str
    author: str
    is_pull_request: bool
    status: str
    created_at: datetime
    events: list[dict[str, Any]] = field(default_factory=list)
    base: str | None = None  # "refs/heads/<branch>" for PRs
    base_commit: str | None = None
    merge_commit: str | None = None


@dataclass
class Repo:
    """One model repo."""

    repo_id: str
    private: bool
    gated: Gated
    owner: str | None
    created_at: datetime
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: dict[int, Discussion] = field(default_factory=dict)
    granted: set[str] = field(default_factory=set)

    def can_read(self, user: str | None) -> bool:
        """Whether `user` (None: anonymous) may see this repo at all."""
        return not self.private or self.has_access(user)

    def has_access(self, user: str | None) -> bool:
        """Whether `user` is the owner, in the repo's namespace, or was granted access."""
        if user is None:
            return False
        return user in (self.owner, self.repo_id.split("/")[0]) or user in self.granted

    def can_write(self, user: str | None) -> bool:
        """Any authenticated user writes to an unowned repo; else only those with access."""
        return user is not None and (self.owner is None or self.has_access(user))


def repo_not_found(repo_id: str, user: str | None) -> LocalHubError:
    """The Hub's answer for a missing or hidden repo: 401 anonymous, 404 authenticated."""
    if user is None:
        return LocalHubError(
            f"Repository Not Found for url: {repo_id}. Invalid username or password.",
            status=401,
            code="RepoNotFound",
        )
    return LocalHubError(f"Repository Not Found: {repo_id}", status=404, code="RepoNotFound")


class HubStore:
    """All repos, renames and blobs of one local Hub."""

    def __init__(self, root: Path) -> None:
        self.lock = threading.RLock()
        self.blobs = BlobStore(root / "blobs")
        self.repos: dict[str, Repo] = {}
        self.renamed: dict[str, str] = {}

    def reset(self) -> None:
        """Forget every repo and rename (blobs stay: they are content-addressed)."""
        with self.lock:
            self.repos.clear()
            self.renamed.clear()

    # -- repos -----------------------------------------------------------------------------

    def get(self, repo_id: str, user: str | None = None, *, check: bool = True) -> Repo:
        """The repo, or the Hub's RepoNotFound answer when missing or hidden from `user`."""
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None or (check and not repo.can_read(user)):
                raise repo_not_found(repo_id, user)
            return repo

    def create_repo(
        self, repo_id: str, *, private: bool, gated: Gated, owner: str | None, author: str
    ) -> Repo:
        """A new repo whose `main` holds one commit with `.gitattributes`, like the Hub's."""
        _check_repo_id(repo_id)
        with self.lock:
            if repo_id in self.repos:
                raise LocalHubError(f"You already created this model repo: {repo_id}", status=409)
            self.renamed.pop(repo_id, None)
            repo = Repo(repo_id, private, gated, owner, utc_now())
            self.repos[repo_id] = repo
            entry = self.blobs.put(DEFAULT_GITATTRIBUTES.encode(), ".gitattributes")
            first = self._new_commit(
                repo, (), {".gitattributes": entry}, "initial commit", "", author
            )
            repo.branches["main"] = first.id
            return repo

    def delete_repo(self, repo_id: str) -> None:
        """Remove a repo and any rename pointing at it."""
        with self.lock:
            self.get(repo_id, check=False)
            del self.repos[repo_id]
            self.renamed = {old: new for old, new in self.renamed.items() if new != repo_id}

    def rename_repo(self, old: str, new: str) -> None:
        """Move a repo; the old id keeps redirecting to the new one."""
        _check_repo_id(new)
        with self.lock:
            repo = self.get(old, check=False)
            if new in self.repos:
                raise LocalHubError(f"Repository {new} already exists", status=409)
            repo.repo_id = new
            self.repos[new] = self.repos.pop(old)
            self.renamed = {k: (new if v == old else v) for k, v in self.renamed.items()}
            self.renamed[old] = new

    def redirect(self, repo_id: str) -> str | None:
        """The new id of a renamed repo, None if `repo_id` was never renamed (or exists)."""
        with self.lock:
            return None if repo_id in self.repos else self.renamed.get(repo_id)

    # -- refs ------------------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str) -> str:
        """The commit sha a branch, tag, `refs/...` name, sha or sha prefix (7+) points at."""
        with self.lock:
            sha = self._lookup(repo, revision)
            if sha is None:
                raise LocalHubError(
                    f"Invalid rev id: {revision}", status=404, code="RevisionNotFound"
                )
            return sha

    def _lookup(self, repo: Repo, revision: str) -> str | None:
        for prefix, table in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags)):
            name = revision.removeprefix(prefix)
            if name in table and (name == revision or revision.startswith(prefix)):
                return table[name]
        pr = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr:
            return repo.prs.get(int(pr.group(1)))
        if _HEX.match(revision):
            found = [sha for sha in repo.commits if sha.startswith(revision)]
            return found[0] if len(found) == 1 else None
        return None

    def branch_of(self, repo: Repo, revision: str) -> tuple[str, int | None]:
        """Split a commit target into (branch name, PR number); only branches and PR refs."""
        pr = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr and int(pr.group(1)) in repo.prs:
            return revision, int(pr.group(1))
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return name, None
        raise LocalHubError(f"Invalid rev id: {revision}", status=404, code="RevisionNotFound")

    def create_ref(self, repo: Repo, kind: str, name: str, revision: str | None) -> str:
        """Create branch or tag `name` at `revision` (default: main's head); 409 if it exists."""
        with self.lock:
            table = repo.branches if kind == "branch" else repo.tags
            if name in table:
                raise LocalHubError(f"{kind.capitalize()} '{name}' already exists", status=409)
            if kind == "branch" and (name.startswith("refs/") or not name):
                raise LocalHubError(f"Invalid reference for a branch: {name}", status=400)
            table[name] = self.resolve(repo, revision or "main")
            return table[name]

    def delete_ref(self, repo: Repo, ref: str) -> None:
        """Delete `refs/heads/x`, `refs/tags/x` or a bare branch/tag name."""
        with self.lock:
            for prefix, table in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags)):
                name = ref.removeprefix(prefix)
                if (ref.startswith(prefix) or name == ref) and name in table:
                    if table is repo.branches and name == "main":
                        raise LocalHubError("Cannot delete the default branch 'main'", status=403)
                    del table[name]
                    return
            raise LocalHubError(f"Invalid rev id: {ref}", status=404, code="RevisionNotFound")

    # -- history ---------------------------------------------------------------------------

    def commit_at(self, repo: Repo, revision: str) -> Commit:
        """The commit a revision points at."""
        with self.lock:
            return repo.commits[self.resolve(repo, revision)]

    def history(self, repo: Repo, revision: str) -> Iterator[Commit]:
        """Commits reachable from `revision` by first parents, newest first."""
        commit: Commit | None = self.commit_at(repo, revision)
        while commit is not None:
            yield commit
            commit = repo.commits[commit.parents[0]] if commit.parents else None

    def last_commit(self, repo: Repo, revision: str, path: str) -> Commit:
        """The newest commit that changed `path` (a file or a folder prefix)."""
        newest: Commit | None = None
        for commit in self.history(repo, revision):
            if newest is not None and _slice(commit.tree, path) != _slice(newest.tree, path):
                return newest
            newest = commit
        assert newest is not None
        return newest

    # -- commits ---------------------------------------------------------------------------

    def apply_commit(
        self,
        repo: Repo,
        target: str,
        *,
        additions: Mapping[str, FileEntry],
        deletions: Sequence[tuple[str, bool]] = (),
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Commit onto branch or `refs/pr/N` `target`; 412 if `parent_commit` is not its head."""
        with self.lock:
            branch, pr_num = self.branch_of(repo, target)
            head = repo.prs[pr_num] if pr_num is not None else repo.branches[branch]
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                raise LocalHubError(STALE_PARENT_MESSAGE, status=412)
            tree = _edit_tree(repo.commits[head].tree, additions, deletions)
            commit = self._new_commit(repo, (head,), tree, title, message, author)
            if pr_num is not None:
                repo.prs[pr_num] = commit.id
                self._pr_commit_event(repo.discussions[pr_num], commit)
            else:
                repo.branches[branch] = commit.id
            return commit

    def _new_commit(
        self,
        repo: Repo,
        parents: tuple[str, ...],
        tree: Mapping[str, FileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        when = utc_now()
        full = f"{title}\n\n{message}" if message else title
        sha = commit_id(parents, tree, full, author, when)
        commit = Commit(sha, parents, dict(tree), title, message, author, when)
        repo.commits[sha] = commit
        return commit

    # -- discussions -----------------------------------------------------------------------

    def open_discussion(
        self,
        repo: Repo,
        *,
        title: str,
        description: str,
        author: str,
        pull_request: bool,
        base: str = "main",
        base_commit: str | None = None,
    ) -> Discussion:
        """Open a discussion or PR; a PR starts as a draft at its base's head."""
        with self.lock:
            num = max(repo.discussions, default=0) + 1
            status = "draft" if pull_request else "open"
            item = Discussion(num, title, author, pull_request, status, utc_now())
            item.events.append(comment_event(author, description))
            if pull_request:
                item.base = f"refs/heads/{base}"
                item.base_commit = base_commit or self.resolve(repo, base)
                repo.prs[num] = item.base_commit
            repo.discussions[num] = item
            return item

    def discussion(self, repo: Repo, num: int) -> Discussion:
        """Discussion `num`, 404 if missing."""
        with self.lock:
            if num not in repo.discussions:
                raise LocalHubError(f"Discussion #{num} not found in {repo.repo_id}", status=404)
            return repo.discussions[num]

    def set_status(self, repo: Repo, num: int, status: str, author: str) -> dict[str, Any]:
        """Open or close a discussion; merged ones stay merged."""
        with self.lock:
            item = self.discussion(repo, num)
            if status not in ("open", "closed"):
                raise LocalHubError(f"Invalid status '{status}': use open or closed", status=400)
            if item.status == "merged":
                raise LocalHubError(f"Pull request #{num} is already merged", status=400)
            item.status = status
            event = _event("status-change", author, {"status": status})
            item.events.append(event)
            return event

    def merge_pr(self, repo: Repo, num: int, author: str) -> Commit:
        """Apply a PR's changes onto its base branch as a merge commit; 409 on conflicts."""
        with self.lock:
            item = self.discussion(repo, num)
            if not item.is_pull_request or item.status in ("merged", "closed"):
                raise LocalHubError(f"#{num} is not an open pull request", status=400)
            assert item.base is not None and item.base_commit is not None
            branch = item.base.removeprefix("refs/heads/")
            head = repo.branches[branch]
            tree = _three_way(
                repo.commits[item.base_commit].tree,
                repo.commits[repo.prs[num]].tree,
                repo.commits[head].tree,
                num,
            )
            commit = self._new_commit(
                repo, (head, repo.prs[num]), tree, f"Merge pull request #{num}", item.title, author
            )
            repo.branches[branch] = commit.id
            item.status, item.merge_commit = "merged", commit.id
            item.events.append(_event("status-change", author, {"status": "merged"}))
            return commit

    def _pr_commit_event(self, item: Discussion, commit: Commit) -> None:
        item.events.append(
            _event("commit", commit.author, {"subject": commit.title, "oid": commit.id})
        )
        if item.status == "draft":
            item.status = "open"


def comment_event(author: str, text: str) -> dict[str, Any]:
    """A discussion event holding a comment."""
    return _event("comment", author, {"edited": False, "hidden": False, "latest": {"raw": text}})


_EVENT_COUNTER = iter(range(1, 1 << 62))


def _event(kind: str, author: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{next(_EVENT_COUNTER):024x}",
        "type": kind,
        "createdAt": iso(utc_now()),
        "author": {"name": author},
        "data": data,
    }


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id) or ".." in repo_id:
        raise LocalHubError(
            f"Invalid repo id '{repo_id}': use 'namespace/name' made of letters, digits, -, _, .",
            status=400,
        )


def _slice(tree: Mapping[str, FileEntry], path: str) -> dict[str, str]:
    prefix = path.rstrip("/") + "/"
    return {p: e.git_oid for p, e in tree.items() if p == path or p.startswith(prefix)}


def _edit_tree(
    tree: Mapping[str, FileEntry],
    additions: Mapping[str, FileEntry],
    deletions: Sequence[tuple[str, bool]],
) -> dict[str, FileEntry]:
    new = dict(tree)
    for path, is_folder in deletions:
        doomed = list(_slice(new, path)) if is_folder else [path] if path in new else []
        if not doomed:
            raise LocalHubError(
                f"Cannot delete '{path}': no such {'folder' if is_folder else 'file'}",
                status=404,
                code="EntryNotFound",
            )
        for gone in doomed:
            del new[gone]
    new.update(additions)
    return new


def _three_way(
    base: Mapping[str, FileEntry],
    theirs: Mapping[str, FileEntry],
    ours: Mapping[str, FileEntry],
    num: int,
) -> dict[str, FileEntry]:
    merged = dict(ours)
    conflicts = []
    for path in set(base) | set(theirs):
        if base.get(path) == theirs.get(path):
            continue
        if ours.get(path) not in (base.get(path), theirs.get(path)):
            conflicts.append(path)
        elif path in theirs:
            merged[path] = theirs[path]
        else:
            merged.pop(path, None)
    if conflicts:
        raise LocalHubError(
            f"Pull request #{num} has conflicts in {sorted(conflicts)}; rebase it", status=409
        )
    return merged
