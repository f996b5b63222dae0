"""Server-side seeding and inspection of the local Hub (no HTTP): the tests' back door."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pearl_bot.testing.hub.objects import FileEntry, LocalHubError, iso
from pearl_bot.testing.hub.store import Gated, HubStore, Repo

SEED_AUTHOR = "seed"
_SKIPPED_DIRS = {".git", ".cache"}


class SeedingMixin:
    """Python API over the store; `LocalHub` mixes it in."""

    store: HubStore

    def create_repo(
        self,
        repo_id: str,
        *,
        private: bool = False,
        gated: Gated = False,
        owner: str | None = None,
    ) -> None:
        """Create a repo; without `owner`, any authenticated user may write to it."""
        self.store.create_repo(
            repo_id, private=private, gated=gated, owner=owner, author=owner or SEED_AUTHOR
        )

    def update_repo(
        self, repo_id: str, *, private: bool | None = None, gated: Gated | None = None
    ) -> None:
        """Change visibility or gating of an existing repo."""
        with self.store.lock:
            repo = self._repo(repo_id)
            repo.private = repo.private if private is None else private
            repo.gated = repo.gated if gated is None else gated

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path],
        *,
        message: str = "update",
        description: str = "",
        branch: str = "main",
        delete: Sequence[str] = (),
        author: str = SEED_AUTHOR,
    ) -> str:
        """Commit files (bytes, text or a local file) to a branch or `refs/pr/N`; new sha.

        The repo is created (public, unowned) if missing. `delete` names files or folders.
        """
        with self.store.lock:
            if repo_id not in self.store.repos:
                self.create_repo(repo_id)
            repo = self._repo(repo_id)
            additions = {path.strip("/"): self._entry(path, data) for path, data in files.items()}
            tree = self.store.commit_at(repo, branch).tree
            deletions = [(p.strip("/"), p.strip("/") not in tree) for p in delete]
            done = self.store.apply_commit(
                repo,
                branch,
                additions=additions,
                deletions=deletions,
                title=message,
                message=description,
                author=author,
            )
            return done.id

    def commit_folder(
        self, repo_id: str, folder: Path, *, message: str = "upload", branch: str = "main"
    ) -> str:
        """Commit every file under `folder` (skipping `.git` and `.cache`); new sha."""
        folder = Path(folder)
        if not folder.is_dir():
            raise LocalHubError(f"Cannot upload folder {folder}: it is not a directory")
        files: dict[str, bytes | str | Path] = {
            path.relative_to(folder).as_posix(): path
            for path in sorted(folder.rglob("*"))
            if path.is_file() and not _SKIPPED_DIRS & set(path.relative_to(folder).parts)
        }
        return self.commit(repo_id, files, message=message, branch=branch)

    def create_branch(self, repo_id: str, branch: str, revision: str | None = None) -> None:
        """Create `branch` at `revision` (default: main's head)."""
        self.store.create_ref(self._repo(repo_id), "branch", branch, revision)

    def create_tag(self, repo_id: str, tag: str, revision: str | None = None) -> None:
        """Create `tag` at `revision` (default: main's head)."""
        self.store.create_ref(self._repo(repo_id), "tag", tag, revision)

    def delete_ref(self, repo_id: str, ref: str) -> None:
        """Delete `refs/heads/<branch>` or `refs/tags/<tag>`."""
        self.store.delete_ref(self._repo(repo_id), ref)

    def rename_repo(self, old: str, new: str) -> None:
        """Rename a repo; requests for `old` get 307 redirects to `new`."""
        self.store.rename_repo(old, new)

    def delete_repo(self, repo_id: str) -> None:
        """Delete a repo."""
        self.store.delete_repo(repo_id)

    def grant_access(self, repo_id: str, user: str) -> None:
        """Let `user` read a private or gated repo (and write to an owned one)."""
        with self.store.lock:
            self._repo(repo_id).granted.add(user)

    def open_pull_request(
        self,
        repo_id: str,
        title: str,
        *,
        description: str = "",
        author: str = SEED_AUTHOR,
        base: str = "main",
    ) -> int:
        """Open a draft PR (ref `refs/pr/N` at `base`'s head); commit to it with `branch=`."""
        item = self.store.open_discussion(
            self._repo(repo_id),
            title=title,
            description=description,
            author=author,
            pull_request=True,
            base=base,
        )
        return item.num

    # -- inspection --------------------------------------------------------------------------

    def head(self, repo_id: str, ref: str = "main") -> str:
        """The 40-hex sha a branch, tag or `refs/pr/N` points at."""
        return self.store.resolve(self._repo(repo_id), ref)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file at a revision, path -> content."""
        tree = self.store.commit_at(self._repo(repo_id), revision).tree
        return {path: self.store.blobs.read(entry.sha256) for path, entry in sorted(tree.items())}

    def read_file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """One file's content at a revision."""
        tree = self.store.commit_at(self._repo(repo_id), revision).tree
        if path not in tree:
            raise LocalHubError(
                f"'{path}' does not exist in {repo_id} at {revision}",
                status=404,
                code="EntryNotFound",
            )
        return self.store.blobs.read(tree[path].sha256)

    def list_commits(self, repo_id: str, ref: str = "main") -> list[dict[str, Any]]:
        """First-parent history, newest first: id, title, message, parents, author, date."""
        return [
            {
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "parents": list(c.parents),
                "author": c.author,
                "date": iso(c.date),
            }
            for c in self.store.history(self._repo(repo_id), ref)
        ]

    def pull_requests(self, repo_id: str) -> list[dict[str, Any]]:
        """PRs, oldest first: num, title, description, status, author, ref, head, base."""
        repo = self._repo(repo_id)
        with self.store.lock:
            return [
                {
                    "num": d.num,
                    "title": d.title,
                    "description": d.events[0]["data"]["latest"]["raw"],
                    "status": d.status,
                    "author": d.author,
                    "ref": f"refs/pr/{d.num}",
                    "head": repo.prs[d.num],
                    "base": d.base,
                    "merge_commit": d.merge_commit,
                    "comments": [
                        e["data"]["latest"]["raw"] for e in d.events[1:] if e["type"] == "comment"
                    ],
                }
                for d in sorted(repo.discussions.values(), key=lambda d: d.num)
                if d.is_pull_request
            ]

    def _repo(self, repo_id: str) -> Repo:
        return self.store.get(repo_id, check=False)

    def _entry(self, path: str, data: bytes | str | Path) -> FileEntry:
        if isinstance(data, Path):
            data = data.read_bytes()
        elif isinstance(data, str):
            data = data.encode()
        return self.store.blobs.put(data, path.strip("/"))
