"""Test harness: every test runs offline, against loopback only, with a private HF_HOME.

The Hub client reads `HF_ENDPOINT`, `HF_HOME` and the Xet switch when it is imported, so they
are set here, before any test module can import huggingface_hub. The local Hub server started
by the `local_hub` fixture (tests/fixtures_hub.py) listens on the port chosen here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

assert "huggingface_hub" not in __import__("sys").modules, "import order: conftest sets env first"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


HUB_PORT = _free_port()
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="pearl-bot-tests-hf-home-"))
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_HOME=str(_SESSION_HOME),
    # Caches the engine builds (the compiled trim helper) stay inside the test session too.
    XDG_CACHE_HOME=str(_SESSION_HOME / "xdg-cache"),
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
    HF_HUB_ETAG_TIMEOUT="5",
    HF_HUB_DOWNLOAD_TIMEOUT="5",
    HF_TOKEN="",
)
os.environ.pop("GITHUB_ACTIONS", None)

pytest_plugins = ["fixtures_hub", "fixtures_models"]


# --------------------------------------------------------------------------------------------
# No test may reach the internet: refuse every connection that is not to loopback.
# --------------------------------------------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _isolated_hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh HF_HOME per test, no token, no telemetry, no progress bars from the Hub client."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    yield
