"""Upstream model cards, read from the Hub at the revisions the lock pins.

Only what the merge's own card and scores use is kept: the license, the upstream's own
`base_model` (its ancestors) and its `model-index` results. Reading never fails a run: a
missing, unreachable or malformed card becomes an `UpstreamCard` whose `problems` say what
went wrong, so the rendered card can state what is unknown. Every string read here is
untrusted; `pearl_bot.card` escapes it on output.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from pearl_bot.lock import Lock, LockedUpstream

logger = logging.getLogger(__name__)

#: Links in the card point at the public Hub, where the card is read.
HUB_URL = "https://huggingface.co"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


@dataclass(frozen=True)
class UpstreamCard:
    """What one upstream's card declares, read at its locked revision (strings untrusted)."""

    key: str
    repo_id: str
    revision: str
    license: str | None = None
    base_model: tuple[str, ...] = ()
    base_model_relation: str | None = None
    eval_results: tuple[EvalResult, ...] = ()
    #: What was wrong with the card (missing, unreadable, broken model-index), for the reader.
    problems: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"{HUB_URL}/{self.repo_id}/blob/{self.revision}/README.md"


def fetch_upstream_cards(
    lock: Lock, *, api: HfApi | None = None, token: str | None = None
) -> dict[str, UpstreamCard]:
    """Read the card of every Hub upstream at its locked revision, keyed by lock key.

    Missing or broken cards are tolerated with a warning: the card then says what is unknown.
    """
    api = api if api is not None else HfApi(token=token)
    return {u.key: _fetch_card(api, u, token) for u in lock.upstreams if u.repo_id is not None}


def _fetch_card(api: HfApi, upstream: LockedUpstream, token: str | None) -> UpstreamCard:
    assert upstream.repo_id is not None
    try:
        path = api.hf_hub_download(
            upstream.repo_id, "README.md", revision=upstream.revision, token=token
        )
        text = Path(str(path)).read_text(encoding="utf-8-sig")
    except EntryNotFoundError:
        return _unreadable(upstream, "it has no README.md")
    except (HfHubHTTPError, OSError, UnicodeDecodeError) as err:
        return _unreadable(upstream, f"it could not be read ({type(err).__name__}: {err})")
    return parse_upstream_card(
        text, key=upstream.key, repo_id=upstream.repo_id, revision=upstream.revision
    )


def _unreadable(upstream: LockedUpstream, why: str) -> UpstreamCard:
    assert upstream.repo_id is not None
    logger.warning("card of %s@%s skipped: %s", upstream.repo_id, upstream.revision[:7], why)
    return UpstreamCard(upstream.key, upstream.repo_id, upstream.revision, problems=(why,))


def parse_upstream_card(text: str, *, key: str, repo_id: str, revision: str) -> UpstreamCard:
    """Read license, base_model and model-index from a card's text; never raises."""
    problems: list[str] = []
    card = _load_card(text, repo_id, problems)
    data = card.data if card is not None else ModelCardData()
    assert isinstance(data, ModelCardData)
    return UpstreamCard(
        key=key,
        repo_id=repo_id,
        revision=revision,
        license=data.license if isinstance(data.license, str) else None,
        base_model=_strings(data.base_model),
        base_model_relation=_string(getattr(data, "base_model_relation", None)),
        eval_results=tuple(data.eval_results or ()),
        problems=tuple(problems),
    )


def _load_card(text: str, repo_id: str, problems: list[str]) -> ModelCard | None:
    try:
        return ModelCard(text)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        problem = f"its metadata is invalid ({_one_line(str(err)).split('. ')[0][:200]})"
        logger.warning("card of %s: %s; reading it without eval results", repo_id, problem)
        problems.append(problem)
    try:
        return ModelCard(text, ignore_metadata_errors=True)
    except (ValueError, TypeError, yaml.YAMLError):
        return None


def _strings(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(item for item in items if isinstance(item, str) and item)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())
