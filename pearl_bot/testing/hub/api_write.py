"""Write routes: repo create/delete/move/settings, validate-yaml, preupload, LFS, commit, refs.

The commit route is the Hub's ndjson protocol: a header line (summary, description,
parentCommit), then file / lfsFile / deletedFile / deletedFolder lines; see research §1.3.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from pearl_bot.testing.hub.objects import FileEntry, LocalHubError, front_matter, is_lfs_path
from pearl_bot.testing.hub.store import Repo
from pearl_bot.testing.hub.wire import (
    REPO_API,
    HubContext,
    Request,
    Response,
    json_response,
    repo_of,
    route,
    seg,
)


def _need_user(req: Request) -> str:
    if req.user is None:
        raise LocalHubError("Invalid username or password: this action needs a token", status=401)
    return req.user


@route("POST", r"/api/repos/create")
def create_repo(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Create a model repo owned by the caller; 409 (still with `url`) when it exists."""
    user = _need_user(req)
    body = req.json()
    if body.get("type", "model") != "model":
        raise LocalHubError(f"The local Hub serves model repos only, not '{body['type']}'")
    name = str(body.get("name") or "")
    repo_id = f"{body['organization']}/{name}" if body.get("organization") else f"{user}/{name}"
    url = f"{ctx.url}/{repo_id}"
    private = body.get("private") is True or body.get("visibility") == "private"
    try:
        ctx.store.create_repo(repo_id, private=private, gated=False, owner=user, author=user)
    except LocalHubError as exc:
        if exc.status == 409:
            return json_response({"error": exc.message, "url": url}, 409)
        raise
    return json_response({"url": url, "name": repo_id, "id": repo_id})


@route("DELETE", r"/api/repos/delete")
def delete_repo(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Delete a repo the caller may write to."""
    user = _need_user(req)
    body = req.json()
    repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
    repo = ctx.store.get(repo_id, user)
    if not repo.can_write(user):
        raise LocalHubError(f"You cannot delete {repo_id}: you are not its owner", status=403)
    ctx.store.delete_repo(repo_id)
    return json_response({})


@route("POST", r"/api/repos/move")
def move_repo(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Rename a repo; the old id keeps answering with redirects."""
    user = _need_user(req)
    body = req.json()
    repo = ctx.store.get(str(body.get("fromRepo")), user)
    if not repo.can_write(user):
        raise LocalHubError(f"You cannot move {repo.repo_id}: you are not its owner", status=403)
    ctx.store.rename_repo(repo.repo_id, str(body.get("toRepo")))
    return json_response({})


@route("PUT", REPO_API + r"/settings")
def settings(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Change `private` and `gated`."""
    repo = repo_of(ctx, req, match, write=True)
    body = req.json()
    with ctx.store.lock:
        if "private" in body:
            repo.private = bool(body["private"])
        if body.get("visibility") in ("public", "private"):
            repo.private = body["visibility"] == "private"
        if "gated" in body:
            if body["gated"] not in (False, "auto", "manual"):
                raise LocalHubError(f"Invalid gated value {body['gated']!r}: use false|auto|manual")
            repo.gated = body["gated"]
    return json_response({})


@route("POST", r"/api/validate-yaml")
def validate_yaml(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Check a README's metadata block; JSON on success too (the client parses it first)."""
    content = str(req.json().get("content", ""))
    try:
        front_matter(content.encode())
    except ValueError as exc:
        return json_response({"errors": [{"message": str(exc)}]}, 400)
    return json_response({"warnings": []})


# -- uploads ---------------------------------------------------------------------------------


@route("POST", REPO_API + r"/preupload/(?P<rev>[^/]+)")
def preupload(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Upload mode per file (lfs or regular) and the remote oid used for no-op detection."""
    repo = repo_of(ctx, req, match, write=True)
    revision = seg(match, "rev")
    tree = ctx.store.commit_at(repo, revision).tree
    answers = []
    for item in req.json().get("files", []):
        path, size = str(item["path"]), int(item.get("size", 0))
        mode = "lfs" if size > 0 and is_lfs_path(path, size) else "regular"
        answer: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
        remote = tree.get(path)
        if remote is not None:
            answer["oid"] = remote.sha256 if remote.lfs else remote.git_oid
        answers.append(answer)
    return json_response({"files": answers, "commitOid": ctx.store.resolve(repo, revision)})


@route("POST", r"/(?P<repo>[^/]+(?:/[^/]+)?)\.git/info/lfs/objects/batch")
def lfs_batch(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """git-lfs batch API (basic transfer): upload actions for objects not stored yet."""
    repo = repo_of(ctx, req, match, write=True)
    body = req.json()
    if body.get("operation") != "upload":
        raise LocalHubError("The local Hub's LFS batch endpoint handles uploads only")
    objects = []
    for obj in body.get("objects", []):
        oid, size = str(obj["oid"]), int(obj["size"])
        item: dict[str, Any] = {"oid": oid, "size": size}
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            item["error"] = {"code": 422, "message": f"Invalid oid {oid!r}: expected a sha256"}
        elif not ctx.store.blobs.has(oid):
            href = f"{ctx.url}/_lfs/{repo.repo_id}/{oid}/{size}"
            item["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
        objects.append(item)
    headers = {"Content-Type": "application/vnd.git-lfs+json"}
    return Response(200, headers, json.dumps({"transfer": "basic", "objects": objects}).encode())


@route("PUT", r"/_lfs/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)")
def lfs_upload(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Basic-transfer PUT of one LFS object (no auth, like a presigned URL); checks the hash."""
    oid, size = match.group("oid"), int(match.group("size"))
    actual = hashlib.sha256(req.body).hexdigest()
    if actual != oid or len(req.body) != size:
        raise LocalHubError(
            f"Uploaded object does not match: expected sha256 {oid} and {size} bytes, got "
            f"{actual} and {len(req.body)} bytes; re-upload the file",
            status=400,
        )
    ctx.store.blobs.put(req.body)
    return Response(200, {"ETag": f'"{oid}"'})


@route("POST", r"/_lfs/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)/verify")
def lfs_verify(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """LFS verify: 200 when the object is stored with the announced size."""
    oid, size = match.group("oid"), int(match.group("size"))
    if not ctx.store.blobs.has(oid) or ctx.store.blobs.size(oid) != size:
        raise LocalHubError(f"LFS object {oid} ({size} bytes) was not uploaded", status=404)
    return json_response({"success": True})


# -- commits ---------------------------------------------------------------------------------


@route("POST", REPO_API + r"/commit/(?P<rev>[^/]+)")
def commit(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Apply an ndjson commit atomically; with `create_pr=1` open a PR holding it."""
    repo = repo_of(ctx, req, match, write=True)
    assert req.user is not None
    header, additions, deletions = _parse_commit(ctx, req.body)
    revision, parent = seg(match, "rev"), header.get("parentCommit")
    title, description = str(header.get("summary") or ""), str(header.get("description") or "")
    _validate_readme(ctx, additions)
    if not req.flag("create_pr"):
        done = ctx.store.apply_commit(
            repo,
            revision,
            additions=additions,
            deletions=deletions,
            title=title,
            message=description,
            author=req.user,
            parent_commit=parent,
        )
        return json_response(_commit_answer(ctx, repo, done.id))
    pr_num = _commit_as_pr(
        ctx, repo, req.user, revision, parent, title, description, additions, deletions
    )
    answer = _commit_answer(ctx, repo, repo.prs[pr_num])
    answer["pullRequestUrl"] = f"{ctx.url}/{repo.repo_id}/discussions/{pr_num}"
    return json_response(answer)


def _commit_as_pr(
    ctx: HubContext,
    repo: Repo,
    user: str,
    revision: str,
    parent: str | None,
    title: str,
    description: str,
    additions: dict[str, FileEntry],
    deletions: list[tuple[str, bool]],
) -> int:
    with ctx.store.lock:
        branch, pr = ctx.store.branch_of(repo, revision)
        if pr is not None:
            raise LocalHubError(f"Cannot open a pull request against {revision}", status=400)
        base = ctx.store.resolve(repo, parent) if parent else None
        item = ctx.store.open_discussion(
            repo,
            title=title,
            description=description,
            author=user,
            pull_request=True,
            base=branch,
            base_commit=base,
        )
        ctx.store.apply_commit(
            repo,
            f"refs/pr/{item.num}",
            additions=additions,
            deletions=deletions,
            title=title,
            message=description,
            author=user,
        )
        return item.num


def _commit_answer(ctx: HubContext, repo: Repo, sha: str) -> dict[str, Any]:
    return {
        "success": True,
        "commitOid": sha,
        "commitUrl": f"{ctx.url}/{repo.repo_id}/commit/{sha}",
        "hookOutput": "",
    }


def _parse_commit(
    ctx: HubContext, body: bytes
) -> tuple[dict[str, Any], dict[str, FileEntry], list[tuple[str, bool]]]:
    header: dict[str, Any] | None = None
    additions: dict[str, FileEntry] = {}
    deletions: list[tuple[str, bool]] = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LocalHubError(f"Commit line {number} is not a {{key, value}} object") from exc
        if key == "header":
            header = value
        elif key in ("file", "lfsFile"):
            additions[_clean_path(value["path"])] = _addition(ctx, key, value)
        elif key in ("deletedFile", "deletedFolder"):
            deletions.append((_clean_path(value["path"]), key == "deletedFolder"))
        else:
            raise LocalHubError(f"Commit line {number} has unknown key {key!r}")
    if header is None:
        raise LocalHubError("Commit payload has no header line (key 'header')")
    return header, additions, deletions


def _addition(ctx: HubContext, key: str, value: dict[str, Any]) -> FileEntry:
    path = _clean_path(value["path"])
    if key == "file":
        try:
            data = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, KeyError) as exc:
            raise LocalHubError(f"File '{path}' content is not valid base64") from exc
        return ctx.store.blobs.put(data, path)
    oid = str(value.get("oid", ""))
    if not re.fullmatch(r"[0-9a-f]{64}", oid) or not ctx.store.blobs.has(oid):
        raise LocalHubError(
            f"LFS file '{path}' points to object {oid!r}, which was never uploaded; "
            "upload it through the LFS batch API first",
            status=422,
        )
    if "size" in value and int(value["size"]) != ctx.store.blobs.size(oid):
        raise LocalHubError(f"LFS file '{path}' size {value['size']} does not match its object")
    return ctx.store.blobs.entry(oid, path)


def _clean_path(path: object) -> str:
    text = str(path).strip("/")
    if not text or ".." in text.split("/") or text.startswith(".git/"):
        raise LocalHubError(f"Invalid path in repo: {path!r}")
    return text


def _validate_readme(ctx: HubContext, additions: dict[str, FileEntry]) -> None:
    readme = additions.get("README.md")
    if readme is None:
        return
    try:
        front_matter(ctx.store.blobs.read(readme.sha256))
    except ValueError as exc:
        raise LocalHubError(f"Invalid metadata in README.md: {exc}", status=400) from exc


# -- branches and tags -----------------------------------------------------------------------


@route("POST", REPO_API + r"/branch/(?P<name>[^/]+)")
def create_branch(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Create a branch at `startingPoint` (default: main's head)."""
    repo = repo_of(ctx, req, match, write=True)
    start = req.json().get("startingPoint")
    ctx.store.create_ref(repo, "branch", seg(match, "name"), start)
    return json_response({})


@route("DELETE", REPO_API + r"/branch/(?P<name>[^/]+)")
def delete_branch(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Delete a branch (never main)."""
    repo = repo_of(ctx, req, match, write=True)
    ctx.store.delete_ref(repo, f"refs/heads/{seg(match, 'name')}")
    return json_response({})


@route("POST", REPO_API + r"/tag/(?P<rev>[^/]+)")
def create_tag(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Tag a revision; 409 if the tag exists."""
    repo = repo_of(ctx, req, match, write=True)
    tag = str(req.json().get("tag") or "")
    if not tag or tag.startswith("refs/"):
        raise LocalHubError(f"Invalid tag name {tag!r}")
    ctx.store.create_ref(repo, "tag", tag, seg(match, "rev"))
    return json_response({})


@route("DELETE", REPO_API + r"/tag/(?P<name>[^/]+)")
def delete_tag(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Delete a tag."""
    repo = repo_of(ctx, req, match, write=True)
    ctx.store.delete_ref(repo, f"refs/tags/{seg(match, 'name')}")
    return json_response({})
