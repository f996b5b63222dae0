"""The test harness itself: what conftest promises every test."""

from __future__ import annotations

import os
import socket

import pytest


def test_sockets_to_the_internet_are_refused() -> None:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="loopback"):
        sock.connect(("93.184.216.34", 80))


def test_loopback_connections_are_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


def test_hub_client_points_at_loopback_without_token() -> None:
    import huggingface_hub.constants as hub_constants

    assert hub_constants.ENDPOINT.startswith("http://127.0.0.1:")
    assert os.environ["HF_TOKEN"] == ""
    assert hub_constants.HF_HUB_DISABLE_XET is True
