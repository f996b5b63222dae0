"""Discussion and pull-request routes: list, create, details, comment, status, title, merge."""

from __future__ import annotations

import re
from typing import Any

from pearl_bot.testing.hub.objects import LocalHubError, iso
from pearl_bot.testing.hub.store import Discussion, Repo, comment_event
from pearl_bot.testing.hub.wire import (
    REPO_API,
    HubContext,
    Request,
    Response,
    json_response,
    repo_of,
    route,
)

_ITEM = REPO_API + r"/discussions/(?P<num>\d+)"


def summary(repo: Repo, item: Discussion) -> dict[str, Any]:
    """The fields `get_repo_discussions` reads for one discussion."""
    return {
        "num": item.num,
        "title": item.title,
        "status": item.status,
        "isPullRequest": item.is_pull_request,
        "createdAt": iso(item.created_at),
        "author": {"name": item.author},
        "repo": {"name": repo.repo_id, "type": "model"},
        "numComments": sum(e["type"] == "comment" for e in item.events),
        "pinned": False,
    }


def details(ctx: HubContext, repo: Repo, item: Discussion) -> dict[str, Any]:
    """The fields `get_discussion_details` reads, including PR changes and a file diff."""
    data = summary(repo, item) | {"events": list(item.events)}
    if item.is_pull_request:
        changes: dict[str, Any] = {"base": item.base}
        if item.merge_commit:
            changes["mergeCommitId"] = item.merge_commit
        data |= {"changes": changes, "filesWithConflicts": [], "diff": _diff(ctx, repo, item)}
    return data


def _diff(ctx: HubContext, repo: Repo, item: Discussion) -> str:
    assert item.base_commit is not None
    old = repo.commits[item.base_commit].tree
    new = repo.commits[repo.prs[item.num]].tree
    lines = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            before = "/dev/null" if path not in old else f"a/{path}"
            after = "/dev/null" if path not in new else f"b/{path}"
            lines.append(f"diff --git a/{path} b/{path}\n--- {before}\n+++ {after}\n")
    return "".join(lines)


@route("GET", REPO_API + r"/discussions")
def list_discussions(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Newest first, filtered by type/status/author, paged by `p`."""
    repo = repo_of(ctx, req, match)
    kind, status, author = req.arg("type", "all"), req.arg("status", "all"), req.arg("author")
    with ctx.store.lock:
        items = [
            summary(repo, d)
            for d in sorted(repo.discussions.values(), key=lambda d: -d.num)
            if _wanted(d, kind, status, author)
        ]
    size = ctx.discussions_page_size
    start = int(req.arg("p") or 0) * size
    return json_response(
        {"discussions": items[start : start + size], "count": len(items), "start": start}
    )


def _wanted(item: Discussion, kind: str | None, status: str | None, author: str | None) -> bool:
    if kind == "pull_request" and not item.is_pull_request:
        return False
    if kind == "discussion" and item.is_pull_request:
        return False
    if status == "open" and item.status not in ("open", "draft"):
        return False
    if status == "closed" and item.status not in ("closed", "merged"):
        return False
    return author is None or item.author == author


@route("POST", REPO_API + r"/discussions")
def create_discussion(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Open a discussion, or a draft PR whose ref `refs/pr/N` starts at main's head."""
    repo = repo_of(ctx, req, match, write=True)
    assert req.user is not None
    body = req.json()
    title = str(body.get("title") or "").strip()
    if len(title) < 3:
        raise LocalHubError(f"Discussion title {title!r} is too short: use 3 characters or more")
    item = ctx.store.open_discussion(
        repo,
        title=title,
        description=str(body.get("description") or ""),
        author=req.user,
        pull_request=bool(body.get("pullRequest")),
    )
    return json_response(
        {"num": item.num, "url": f"{ctx.url}/{repo.repo_id}/discussions/{item.num}"}
    )


@route("GET", _ITEM)
def get_discussion(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Details of one discussion or PR."""
    repo = repo_of(ctx, req, match)
    with ctx.store.lock:
        item = ctx.store.discussion(repo, int(match.group("num")))
        return json_response(details(ctx, repo, item))


@route("POST", _ITEM + r"/comment")
def comment(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Add a comment; answers `newMessage`."""
    repo = repo_of(ctx, req, match, write=True)
    text = str(req.json().get("comment") or "")
    if not text.strip():
        raise LocalHubError("Comment is empty: write some text")
    with ctx.store.lock:
        item = ctx.store.discussion(repo, int(match.group("num")))
        event = comment_event(req.user or "", text)
        item.events.append(event)
    return json_response({"newMessage": event})


@route("POST", _ITEM + r"/comment/(?P<comment>[0-9a-fA-F]+)/edit")
def edit_comment(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Edit a comment (a PR's description is its first one); only its author may. Answers
    `updatedComment`."""
    repo = repo_of(ctx, req, match, write=True)
    content = str(req.json().get("content") or "")
    if not content.strip():
        raise LocalHubError("Comment is empty: write some text")
    comment_id = match.group("comment").lower()
    with ctx.store.lock:
        item = ctx.store.discussion(repo, int(match.group("num")))
        event = next(
            (e for e in item.events if e["id"] == comment_id and e["type"] == "comment"), None
        )
        if event is None:
            raise LocalHubError(f"Comment {comment_id} not found", status=404)
        if event["author"]["name"] != req.user:
            raise LocalHubError("Only the author of a comment can edit it", status=403)
        event["data"]["latest"]["raw"] = content
        event["data"]["edited"] = True
    return json_response({"updatedComment": event})


@route("POST", _ITEM + r"/status")
def change_status(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Open or close; answers `newStatus`."""
    repo = repo_of(ctx, req, match, write=True)
    body = req.json()
    num = int(match.group("num"))
    event = ctx.store.set_status(repo, num, str(body.get("status")), req.user or "")
    if body.get("comment"):
        with ctx.store.lock:
            ctx.store.discussion(repo, num).events.append(
                comment_event(req.user or "", str(body["comment"]))
            )
    return json_response({"newStatus": event})


@route("POST", _ITEM + r"/title")
def rename(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Change the title; answers `newTitle`."""
    repo = repo_of(ctx, req, match, write=True)
    title = str(req.json().get("title") or "").strip()
    with ctx.store.lock:
        item = ctx.store.discussion(repo, int(match.group("num")))
        event = comment_event(req.user or "", "")
        event |= {"type": "title-change", "data": {"from": item.title, "to": title}}
        item.title = title
        item.events.append(event)
    return json_response({"newTitle": event})


@route("POST", _ITEM + r"/merge")
def merge(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Merge a PR into its base branch (409 on conflicting changes)."""
    repo = repo_of(ctx, req, match, write=True)
    num = int(match.group("num"))
    text = str(req.json().get("comment") or "")
    with ctx.store.lock:
        if text:
            ctx.store.discussion(repo, num).events.append(comment_event(req.user or "", text))
        done = ctx.store.merge_pr(repo, num, req.user or "")
    return json_response({"mergeCommitId": done.id})
