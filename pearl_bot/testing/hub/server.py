"""`LocalHub`: a threaded stdlib HTTP server that answers huggingface_hub like the real Hub.

It serves, from a folder, the subset of the Hub API the client uses (info, refs, commits, tree,
resolve, uploads, commits, PRs), plus injectable faults per route and a request log. Tests
seed and inspect it through Python methods that never go through HTTP.
"""

from __future__ import annotations

import logging
import re
import socket
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

# Importing the route modules registers their routes.
from pearl_bot.testing.hub import api_discussions, api_read, api_write  # noqa: F401
from pearl_bot.testing.hub.objects import LocalHubError
from pearl_bot.testing.hub.seeding import SeedingMixin
from pearl_bot.testing.hub.store import HubStore
from pearl_bot.testing.hub.wire import (
    Request,
    Response,
    error_response,
    find_route,
    json_response,
)

logger = logging.getLogger(__name__)

#: Request bodies kept in the log are cut to this size (LFS uploads can be large).
LOGGED_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server answered: method, raw path (with query), headers, status."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    user: str | None = None
    body: bytes = b""  # first LOGGED_BODY_LIMIT bytes


@dataclass
class Fault:
    """An injected failure for requests whose method and path match."""

    method: str
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: bytes | None
    times: int
    drop_after_bytes: int | None
    after_handling: bool

    def matches(self, method: str, path: str) -> bool:
        """Method equal (or `*`) and the regex found in the raw or the unquoted path."""
        if self.method not in ("*", method):
            return False
        return bool(self.pattern.search(path) or self.pattern.search(unquote(path)))

    def response(self) -> Response:
        """The fault's own answer."""
        if self.body is not None:
            return Response(self.status, dict(self.headers), self.body)
        message = f"Injected fault: HTTP {self.status}"
        return json_response(
            {"error": message}, self.status, {"X-Error-Message": message, **self.headers}
        )


@dataclass
class _Faults:
    items: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.items:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self.items.remove(fault)
                    return fault
        return None


class LocalHub(SeedingMixin):
    """A local Hub server on `host:port` (port 0: any free port), storing blobs under `root`."""

    tree_page_size = 1000
    commits_page_size = 50
    discussions_page_size = 50

    def __init__(self, root: Path | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="local-hub-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.store = HubStore(self.root)
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}" if port else ""
        self.cdn_url = ""
        self.requests: list[RecordedRequest] = []
        self._faults = _Faults()
        self._users: dict[str, str] = {}
        self._log_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind and serve in a daemon thread; returns self so `LocalHub().start()` chains."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.hub = self
        self.port = int(server.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        # The "CDN" is this same server under another origin name, so the client treats an
        # LFS redirect as off-Hub: it stops at the 302 and drops auth, as with the real CDN.
        cdn_host = "127.0.0.1" if self.host == "localhost" else "localhost"
        self.cdn_url = f"http://{cdn_host}:{self.port}"
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        logger.info("local Hub serving %s from %s", self.url, self.root)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; a temp root is deleted."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repos, users, faults, the request log and page-size overrides."""
        self.store.reset()
        self._users.clear()
        self.clear_faults()
        with self._log_lock:
            self.requests.clear()
        for name in ("tree_page_size", "commits_page_size", "discussions_page_size"):
            self.__dict__.pop(name, None)

    # -- users and faults --------------------------------------------------------------------

    def add_user(self, token: str, name: str) -> None:
        """Map a bearer token to a user name (unknown tokens become `user-<first 6 chars>`)."""
        self._users[token] = name

    def user_for(self, authorization: str | None) -> str | None:
        """The user an `Authorization` header authenticates; None when anonymous."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self._users.get(token, f"user-{token[:6]}")

    def add_fault(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        times: int = 1,
        drop_after_bytes: int | None = None,
        after_handling: bool = False,
    ) -> None:
        """Fail the next `times` requests (negative: all) whose method and path match.

        `drop_after_bytes`: send the real response's headers and that many body bytes, then
        close the socket. `after_handling`: perform the real action, then answer `status`.
        """
        data = body.encode() if isinstance(body, str) else body
        fault = Fault(
            method.upper(),
            re.compile(path_pattern),
            status,
            dict(headers or {}),
            data,
            times,
            drop_after_bytes,
            after_handling,
        )
        with self._faults.lock:
            self._faults.items.append(fault)

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._faults.lock:
            self._faults.items.clear()

    # -- request handling (called from handler threads) --------------------------------------

    def handle(self, req: Request, full_path: str) -> tuple[Response, int | None]:
        """Answer a request, applying a matching fault; returns the answer and a drop point."""
        fault = self._faults.take(req.method, full_path)
        if fault is not None and not fault.after_handling and fault.drop_after_bytes is None:
            logger.debug("fault %s on %s %s", fault.status, req.method, full_path)
            return fault.response(), None
        answer = self.dispatch(req)
        if fault is None:
            return answer, None
        if fault.after_handling:
            return fault.response(), fault.drop_after_bytes
        return answer, fault.drop_after_bytes

    def dispatch(self, req: Request) -> Response:
        """Route a request; renamed repos answer 307, errors the Hub's error shape."""
        found = find_route(req.method, req.path)
        if found is None:
            message = f"Sorry, the local Hub does not serve {req.method} {req.path}"
            return error_response(LocalHubError(message, status=404))
        route, match = found
        if "repo" in match.groupdict():
            moved = self.store.redirect(unquote(match.group("repo")))
            if moved is not None:
                return self._redirect(req, match, moved)
        try:
            return route.handler(self, req, match)
        except LocalHubError as exc:
            return error_response(exc)
        except Exception as exc:  # a bug here must reach the client as a 500, not a hang
            logger.exception("local Hub failed on %s %s", req.method, req.path)
            return error_response(LocalHubError(f"Internal error: {exc!r}", status=500))

    def _redirect(self, req: Request, match: re.Match[str], new_id: str) -> Response:
        start, end = match.span("repo")
        location = self.url + req.path[:start] + new_id + req.path[end:]
        query = "&".join(f"{k}={v}" for k, values in req.query.items() for v in values)
        location += f"?{query}" if query else ""
        return Response(307, {"Location": location})

    def record(self, req: Request, full_path: str, status: int) -> None:
        """Append to the request log."""
        item = RecordedRequest(
            req.method,
            full_path,
            dict(req.headers.items()),
            status,
            req.user,
            req.body[:LOGGED_BODY_LIMIT],
        )
        with self._log_lock:
            self.requests.append(item)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub


class _Handler(BaseHTTPRequestHandler):
    """Parses one request, lets the hub answer it, writes the answer (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # idle keep-alive connections close after this many seconds
    # Headers and body go out as two writes; with Nagle on, the client's delayed ACK adds ~40 ms
    # to every keep-alive answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _serve(self) -> None:
        hub = self.server.hub
        path, _, query = self.path.partition("?")
        body = self._read_body()
        user = hub.user_for(self.headers.get("Authorization"))
        req = Request(
            self.command, path, parse_qs(query, keep_blank_values=True), self.headers, body, user
        )
        answer, drop = hub.handle(req, self.path)
        # Logged before answering, so a client that saw the answer also sees it in the log.
        hub.record(req, self.path, answer.status)
        self._send(answer, drop)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, answer: Response, drop: int | None) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        length = answer.length if answer.length is not None else len(answer.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body if drop is None else answer.body[:drop])
        if drop is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
