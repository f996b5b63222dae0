"""HTTP plumbing of the local Hub: parsed requests, responses, routes and error answers.

Routes match the RAW request path: the Hub client quotes revisions with `safe=""`
(`refs%2Fpr%2F1`), so a revision is one path segment that is unquoted after matching.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

from pearl_bot.testing.hub.objects import LocalHubError
from pearl_bot.testing.hub.store import HubStore, Repo


class HubContext(Protocol):
    """What route handlers need from the server."""

    store: HubStore
    url: str
    cdn_url: str
    tree_page_size: int
    commits_page_size: int
    discussions_page_size: int


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str  # raw, without the query string
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    user: str | None

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`."""
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`1`, `true`, `True`)."""
        return (self.arg(name) or "").lower() in ("1", "true")

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; 400 when it is not one."""
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise LocalHubError(f"Request body is not valid JSON: {exc}", status=400) from exc
        if not isinstance(data, dict):
            raise LocalHubError("Request body must be a JSON object", status=400)
        return data

    def form(self) -> dict[str, list[str]]:
        """A form-urlencoded body."""
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Response:
    """An answer; `length` overrides Content-Length for HEAD answers without a body."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: int | None = None


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer."""
    all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return Response(status, all_headers, json.dumps(data).encode())


def error_response(error: LocalHubError) -> Response:
    """The Hub's error shape: X-Error-Code / X-Error-Message headers and `{"error": ...}`."""
    headers = {"X-Error-Message": error.message.replace("\n", " "), **error.headers}
    if error.code:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message}, error.status, headers)


Handler = Callable[[HubContext, Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    """An HTTP method plus a regex over the raw path; `repo` names the group with the repo id."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    fallback: bool = False


def route(method: str, pattern: str, *, fallback: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler` for `method` and a path regex (anchored at both ends).

    Fallback routes are tried after all others: the bare repo-info pattern would otherwise
    swallow `/api/models/<name>/refs` style paths of single-segment repo ids.
    """

    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, re.compile(f"^{pattern}$"), handler, fallback))
        ROUTES.sort(key=lambda item: item.fallback)
        return handler

    return register


ROUTES: list[Route] = []

# A repo id is `name` or `namespace/name`.
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
REPO_API = r"/api/models/" + _REPO


def seg(match: re.Match[str], name: str) -> str:
    """An unquoted path group (`refs%2Fpr%2F1` -> `refs/pr/1`)."""
    return unquote(match.group(name))


def find_route(method: str, path: str) -> tuple[Route, re.Match[str]] | None:
    """The first route (fallbacks last) for `method` whose pattern matches `path`."""
    for item in ROUTES:
        match = item.pattern.match(path) if item.method == method else None
        if match is not None:
            return item, match
    return None


def repo_of(ctx: HubContext, req: Request, match: re.Match[str], *, write: bool = False) -> Repo:
    """The repo a route names, checked for read (or write) access by the requester."""
    repo_id = seg(match, "repo")
    if write and req.user is None:
        raise LocalHubError("Invalid username or password: this action needs a token", status=401)
    repo = ctx.store.get(repo_id, req.user)
    if write and not repo.can_write(req.user):
        raise LocalHubError(
            f"You don't have the rights to write to {repo_id}; ask its owner for access",
            status=403,
        )
    return repo


def next_link(ctx: HubContext, req: Request, cursor: int) -> dict[str, str]:
    """A `Link: <absolute url>; rel="next"` header pointing at the page starting at `cursor`."""
    query = "&".join(
        f"{key}={value}" for key, values in req.query.items() if key != "cursor" for value in values
    )
    query = f"{query}&cursor={cursor}" if query else f"cursor={cursor}"
    return {"Link": f'<{ctx.url}{req.path}?{query}>; rel="next"'}


def paginate(
    ctx: HubContext, req: Request, items: list[Any], size: int
) -> tuple[list[Any], dict[str, str]]:
    """One page of `items` from the request's cursor, plus the Link header to the next one."""
    start = int(req.arg("cursor") or 0)
    page = items[start : start + size]
    more = start + size < len(items)
    return page, next_link(ctx, req, start + size) if more else {}
