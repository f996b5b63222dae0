"""Fixtures around the local Hub server (owned by the Hub layer's tests).

HF_ENDPOINT is fixed when huggingface_hub is imported, so one server per test session listens
on `conftest.HUB_PORT`; it is started on first use and reset before every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pearl_bot.testing.hub_server import LocalHub

BOT_TOKEN = "hf_test_bot"
BOT_USER = "pearl-bot-tester"


@pytest.fixture(scope="session")
def _session_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    from conftest import HUB_PORT

    hub = LocalHub(tmp_path_factory.mktemp("local-hub"), port=HUB_PORT).start()
    yield hub
    hub.stop()


@pytest.fixture
def local_hub(_session_hub: LocalHub) -> Iterator[LocalHub]:
    """The session's local Hub, emptied: no repos, users, faults or logged requests."""
    _session_hub.reset()
    yield _session_hub
    _session_hub.reset()


@pytest.fixture
def hub_api(local_hub: LocalHub) -> object:
    """An `HfApi` on the local Hub authenticated as `pearl-bot-tester` (token `hf_test_bot`)."""
    from huggingface_hub import HfApi

    local_hub.add_user(BOT_TOKEN, BOT_USER)
    return HfApi(endpoint=local_hub.url, token=BOT_TOKEN)
