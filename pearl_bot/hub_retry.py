"""Bounded retries for the Hub calls that huggingface_hub does not retry itself.

huggingface_hub 2.4 retries downloads, uploads and paginated listings, but not `model_info`,
`list_repo_refs`, `create_repo`, discussions or the commit POST. This module retries the
idempotent ones on 429 and 5xx and on dropped connections, honouring the Hub's `RateLimit`
(`"api";r=0;t=<seconds>`) and `Retry-After` headers, and it never waits longer in total than
the budget (`PEARL_BOT_RETRY_MAX_WAIT`, 120 s by default): a wait beyond the budget stops at
once with the original error, which callers turn into a message that says when to retry.

The commit POST is *not* retried here: `pearl_bot.publish` checks whether the commit landed
before it tries again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils._http import parse_ratelimit_headers

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Status codes worth another try: rate limited, or the Hub had a bad moment.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

ATTEMPTS_ENV = "PEARL_BOT_RETRY_ATTEMPTS"
MAX_WAIT_ENV = "PEARL_BOT_RETRY_MAX_WAIT"
BASE_WAIT_ENV = "PEARL_BOT_RETRY_BASE_WAIT"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: `attempts` calls in all, at most `max_wait` s asleep."""

    attempts: int = 4
    base_wait: float = 1.0
    max_wait: float = 120.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, overridden by `PEARL_BOT_RETRY_*` environment variables."""
        return cls(
            attempts=max(1, int(os.environ.get(ATTEMPTS_ENV, cls.attempts))),
            base_wait=max(0.0, float(os.environ.get(BASE_WAIT_ENV, cls.base_wait))),
            max_wait=max(0.0, float(os.environ.get(MAX_WAIT_ENV, cls.max_wait))),
        )

    def backoff(self, attempt: int) -> float:
        """Exponential backoff before try `attempt + 1`, capped at 30 s."""
        return float(min(30.0, self.base_wait * 2 ** (attempt - 1)))


def status_of(err: BaseException) -> int | None:
    """The HTTP status of a Hub error, or None for a transport error or anything else."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return int(err.response.status_code)
    return None


def is_transient(err: BaseException) -> bool:
    """Whether `err` may go away on its own: rate limits, 5xx, dropped connections."""
    if isinstance(err, httpx2.TransportError):
        return True
    return status_of(err) in RETRY_STATUS


def requested_wait(err: BaseException) -> float | None:
    """Seconds the Hub asked us to wait (`RateLimit` reset or `Retry-After`), if it did."""
    if not isinstance(err, HfHubHTTPError) or err.response is None:
        return None
    headers = err.response.headers
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        return float(info.reset_in_seconds)
    value = headers.get("retry-after")
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    return None


def describe(err: BaseException) -> str:
    """A short account of a Hub failure: `429 Too Many Requests (retry after 60 s)`."""
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # hf_hub_download hides a failed HEAD call behind this error
    status = status_of(err)
    if status is None:
        return f"{type(err).__name__}: {err}".splitlines()[0]
    assert isinstance(err, HfHubHTTPError) and err.response is not None
    text = f"{status} {err.response.reason_phrase}".strip()
    if err.server_message:
        text += f": {err.server_message.strip()}"
    wait = requested_wait(err)
    if wait is not None:
        text += f" (retry after {wait:g} s)"
    return text


def next_wait(err: BaseException, attempt: int, policy: RetryPolicy) -> float:
    """How long to sleep after failed try `attempt`: what the Hub asked, else backoff."""
    wait = requested_wait(err)
    return policy.backoff(attempt) if wait is None else wait


def retry_hub_call(call: Callable[[], T], *, what: str, policy: RetryPolicy | None = None) -> T:
    """Run the idempotent Hub `call`, retrying transient failures within the policy.

    `what` names the call in log lines ("model_info('org/x')"). The last error is re-raised
    unchanged when the tries or the wait budget run out, or at once when it is not transient.
    """
    policy = policy or RetryPolicy.from_env()
    waited = 0.0
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except (HfHubHTTPError, httpx2.TransportError) as err:
            wait = next_wait(err, attempt, policy)
            if not is_transient(err) or attempt == policy.attempts:
                raise
            if waited + wait > policy.max_wait:
                logger.warning(
                    "%s: %s; waiting %gs would exceed the budget", what, describe(err), wait
                )
                raise
            logger.warning("%s: %s; retrying in %gs", what, describe(err), wait)
            time.sleep(wait)
            waited += wait
    raise AssertionError("unreachable: the last attempt returns or raises")
