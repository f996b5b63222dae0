"""Read routes: repo info, refs, commits, tree, paths-info, resolve (+ the fake CDN), whoami.

Shapes follow huggingface_hub 2.4's parsers (`ModelInfo`, `GitRefs`, `GitCommitInfo`,
`RepoFile`/`RepoFolder`, `get_hf_file_metadata`); see docs/research §1.3.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from pearl_bot.testing.hub.objects import (
    Commit,
    FileEntry,
    LocalHubError,
    card_data,
    iso,
    safetensors_parameters,
)
from pearl_bot.testing.hub.store import Repo
from pearl_bot.testing.hub.wire import (
    REPO_API,
    HubContext,
    Request,
    Response,
    json_response,
    paginate,
    repo_of,
    route,
    seg,
)

EXPANDABLE = {
    "author",
    "cardData",
    "createdAt",
    "disabled",
    "downloads",
    "gated",
    "lastModified",
    "library_name",
    "likes",
    "pipeline_tag",
    "private",
    "safetensors",
    "sha",
    "siblings",
    "tags",
    "usedStorage",
}


@route("GET", r"/api/whoami-v2")
def whoami(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """The token's user; 401 without a token."""
    if req.user is None:
        raise LocalHubError("Invalid credentials in Authorization header", status=401)
    token = {"displayName": "local-hub", "role": "write"}
    return json_response(
        {
            "type": "user",
            "name": req.user,
            "fullname": req.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": token},
        }
    )


@route("GET", r"/api/agent-harnesses")
def agent_harnesses(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Telemetry side request of the client: not served here."""
    raise LocalHubError("agent harnesses are not served by the local Hub", status=404)


@route("GET", REPO_API + r"/xet-(?P<kind>read|write)-token/(?P<rev>.+)")
def xet_token(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Xet is not spoken here: fail loudly so a forgotten HF_HUB_DISABLE_XET is obvious."""
    raise LocalHubError(
        "The local Hub does not speak Xet; set HF_HUB_DISABLE_XET=1 before importing "
        "huggingface_hub so uploads and downloads use plain LFS",
        status=501,
    )


@route("GET", REPO_API + r"/refs")
def refs(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Branches, tags, converts and (with include_prs) PR refs with their target commits."""
    repo = repo_of(ctx, req, match)
    with ctx.store.lock:
        data: dict[str, Any] = {
            "branches": [_ref(n, f"refs/heads/{n}", s) for n, s in repo.branches.items()],
            "converts": [],
            "tags": [_ref(n, f"refs/tags/{n}", s) for n, s in repo.tags.items()],
        }
        if req.flag("include_prs"):
            data["pullRequests"] = [
                _ref(f"refs/pr/{n}", f"refs/pr/{n}", s) for n, s in sorted(repo.prs.items())
            ]
    return json_response(data)


def _ref(name: str, ref: str, sha: str) -> dict[str, str]:
    return {"name": name, "ref": ref, "targetCommit": sha}


@route("GET", REPO_API + r"/commits/(?P<rev>[^/]+)")
def commits(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """First-parent history, newest first, paginated with Link headers."""
    repo = repo_of(ctx, req, match)
    items = [c.as_api() for c in ctx.store.history(repo, seg(match, "rev"))]
    if "formatted" in req.query.get("expand[]", []):
        for item in items:
            item["formatted"] = {"title": item["title"], "message": item["message"]}
    page, link = paginate(ctx, req, items, ctx.commits_page_size)
    return json_response(page, headers=link)


@route("GET", REPO_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?")
def tree(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Files and folders under a path, recursive or not, paginated with Link headers."""
    repo = repo_of(ctx, req, match)
    revision = seg(match, "rev")
    commit = ctx.store.commit_at(repo, revision)
    folder = seg(match, "path").strip("/") if match.group("path") else ""
    if folder and not any(p.startswith(folder + "/") for p in commit.tree):
        raise LocalHubError(
            f"Folder '{folder}' does not exist at {revision}", status=404, code="EntryNotFound"
        )
    paths = _listing(commit.tree, folder, recursive=req.flag("recursive"))
    expand = req.flag("expand")
    size = min(ctx.tree_page_size, 50) if expand else ctx.tree_page_size
    page, link = paginate(ctx, req, paths, size)
    items = [_item(ctx, repo, commit, p, revision, expand) for p in page]
    return json_response(items, headers=link)


@route("POST", REPO_API + r"/paths-info/(?P<rev>[^/]+)")
def paths_info(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """Tree items for the requested paths that exist; missing paths are skipped."""
    repo = repo_of(ctx, req, match)
    revision = seg(match, "rev")
    commit = ctx.store.commit_at(repo, revision)
    form = req.form()
    expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
    items = []
    for path in dict.fromkeys(p.strip("/") for p in form.get("paths", [])):
        if path in commit.tree or any(p.startswith(path + "/") for p in commit.tree):
            items.append(_item(ctx, repo, commit, path, revision, expand))
    return json_response(items)


def _listing(files: Mapping[str, FileEntry], folder: str, *, recursive: bool) -> list[str]:
    prefix = folder + "/" if folder else ""
    found: set[str] = set()
    for path in files:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        found.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
    return sorted(found)


def _item(
    ctx: HubContext, repo: Repo, commit: Commit, path: str, revision: str, expand: bool
) -> dict[str, Any]:
    entry = commit.tree.get(path)
    if entry is None:
        listing = "".join(
            f"{p}\0{e.git_oid}\n"
            for p, e in sorted(commit.tree.items())
            if p.startswith(path + "/")
        )
        item: dict[str, Any] = {
            "type": "directory",
            "path": path,
            "oid": hashlib.sha1(listing.encode()).hexdigest(),
        }
    else:
        item = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
        if entry.lfs:
            item["lfs"] = {
                "oid": entry.sha256,
                "size": entry.size,
                "pointerSize": entry.pointer_size,
            }
    if expand:
        last = ctx.store.last_commit(repo, revision, path)
        item["lastCommit"] = {"id": last.id, "title": last.title, "date": iso(last.date)}
    return item


# -- resolve + CDN ---------------------------------------------------------------------------


@route("HEAD", r"/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
@route("GET", r"/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
def resolve(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """A file at a revision: regular files inline, LFS files as a 302 to the CDN origin."""
    repo = repo_of(ctx, req, match)
    _check_gate(repo, req.user)
    sha = ctx.store.resolve(repo, seg(match, "rev"))
    path = seg(match, "path")
    entry = ctx.store.commit_at(repo, sha).tree.get(path)
    if entry is None:
        raise LocalHubError(
            f"Entry not found: '{path}' does not exist at {sha}",
            status=404,
            code="EntryNotFound",
            headers={"X-Repo-Commit": sha},
        )
    headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.git_oid}"'}
    if not entry.lfs:
        return blob_response(ctx, req, entry.sha256, headers)
    headers |= {
        "X-Linked-Etag": f'"{entry.sha256}"',
        "X-Linked-Size": str(entry.size),
        # Another origin (localhost vs 127.0.0.1): the client stops here as at the real CDN.
        "Location": f"{ctx.cdn_url}/_cdn/{entry.sha256}?filename={match.group('path')}",
    }
    return Response(302, headers)


@route("HEAD", r"/_cdn/(?P<sha>[0-9a-f]{64})")
@route("GET", r"/_cdn/(?P<sha>[0-9a-f]{64})")
def cdn(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """The content of an LFS blob, with Range support; no auth, like a signed CDN URL."""
    sha256 = match.group("sha")
    if not ctx.store.blobs.has(sha256):
        raise LocalHubError(f"No such object {sha256}", status=404)
    return blob_response(ctx, req, sha256, {"ETag": f'"{sha256}"'})


def blob_response(ctx: HubContext, req: Request, sha256: str, headers: dict[str, str]) -> Response:
    """A blob as 200, or 206/416 for a `Range: bytes=...` request."""
    total = ctx.store.blobs.size(sha256)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
    wanted = req.headers.get("Range")
    span = _parse_range(wanted, total) if wanted else (0, total)
    if span is None:
        headers["Content-Range"] = f"bytes */{total}"
        return Response(416, headers)
    start, end = span
    status = 206 if wanted else 200
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    if req.method == "HEAD":
        return Response(status, headers, length=end - start)
    return Response(status, headers, ctx.store.blobs.read(sha256, start, end))


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as a half-open span; None when unsatisfiable."""
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not found or found.groups() == ("", ""):
        return None
    first, last = found.groups()
    if first == "":
        start, end = max(total - int(last), 0), total
    else:
        start, end = int(first), min(int(last) + 1, total) if last else total
    return (start, end) if start < end else None


def _check_gate(repo: Repo, user: str | None) -> None:
    if not repo.gated or repo.has_access(user):
        return
    if user is None:
        raise LocalHubError(
            f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in.",
            status=401,
            code="GatedRepo",
        )
    raise LocalHubError(
        f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
        f"Ask for access on the repo page.",
        status=403,
        code="GatedRepo",
    )


# -- repo info (fallback routes: their pattern is the most general) ----------------------------


@route("GET", REPO_API + r"/revision/(?P<rev>[^/]+)", fallback=True)
@route("GET", REPO_API, fallback=True)
def model_info(ctx: HubContext, req: Request, match: re.Match[str]) -> Response:
    """`ModelInfo` of a revision (default main); `expand=` limits the keys like the Hub."""
    repo = repo_of(ctx, req, match)
    revision = seg(match, "rev") if "rev" in match.groupdict() else "main"
    commit = ctx.store.commit_at(repo, revision)
    info = _info(ctx, repo, commit, blobs=req.flag("blobs"))
    expand = req.query.get("expand", []) + req.query.get("expand[]", [])
    if not expand:
        return json_response(info)
    unknown = sorted(set(expand) - EXPANDABLE)
    if unknown:
        raise LocalHubError(f"Invalid expand value(s) {unknown}; use {sorted(EXPANDABLE)}")
    return json_response({k: v for k, v in info.items() if k in {"_id", "id", *expand}})


def _info(ctx: HubContext, repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
    readme = commit.tree.get("README.md")
    card = card_data(ctx.store.blobs.read(readme.sha256)) if readme else None
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.id,
        "lastModified": iso(commit.date),
        "createdAt": iso(repo.created_at),
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": list(card.get("tags") or []) if card else [],
        "siblings": [_sibling(p, e, blobs) for p, e in sorted(commit.tree.items())],
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if card is not None:
        info |= {"cardData": card, "library_name": card.get("library_name")}
        info["pipeline_tag"] = card.get("pipeline_tag")
    params = _parameters(ctx, commit)
    if params:
        info["safetensors"] = {"parameters": params, "total": sum(params.values())}
    return info


def _sibling(path: str, entry: FileEntry, blobs: bool) -> dict[str, Any]:
    # The Hub sends only `rfilename` unless `blobs=True` (files_metadata=True in the client).
    if not blobs:
        return {"rfilename": path}
    item: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
    if entry.lfs:
        item["lfs"] = {
            "sha256": entry.sha256,
            "size": entry.size,
            "pointerSize": entry.pointer_size,
        }
    return item


def _parameters(ctx: HubContext, commit: Commit) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path, entry in commit.tree.items():
        if path.endswith(".safetensors"):
            for dtype, n in _file_parameters(ctx, entry).items():
                counts[dtype] = counts.get(dtype, 0) + n
    return counts


_PARAMETERS: dict[str, dict[str, int]] = {}  # blobs are immutable: cache by sha256


def _file_parameters(ctx: HubContext, entry: FileEntry) -> dict[str, int]:
    if entry.sha256 not in _PARAMETERS:
        found: dict[str, int] = {}
        if entry.size >= 8:
            length = int.from_bytes(ctx.store.blobs.read(entry.sha256, 0, 8), "little")
            if length <= min(entry.size - 8, 100_000_000):  # else: not a safetensors file
                found = safetensors_parameters(ctx.store.blobs.read(entry.sha256, 0, 8 + length))
        _PARAMETERS[entry.sha256] = found
    return _PARAMETERS[entry.sha256]
