"""Resolve every upstream model of a recipe to an immutable revision.

A Hub reference `org/name` tracks `main`, `org/name@v2` tracks that branch or tag, and
`org/name@<40 hex>` is pinned; each resolves to the full commit sha the ref points at now, with
one cheap `model_info` call (`expand=["sha"]`, no file listing). A renamed repo is followed (the
Hub redirects the old id) and its canonical id recorded. A local folder resolves to
`sha256:<hex>`, a hash of its weight, config and tokenizer files.

Hub failures become `UpstreamError`s that name the upstream, the recipe field it came from and
the fix: request access to a gated repo, update a reference whose repo or ref is gone.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pearl_bot.errors import UpstreamError
from pearl_bot.hub_retry import describe, retry_hub_call, status_of
from pearl_bot.lock import LockedFile, LockedUpstream
from pearl_bot.recipe import ModelRef, Recipe

logger = logging.getLogger(__name__)

Role = Literal["base", "model"]

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")

#: Non-weight files a merge reads when present; config.json is required.
META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
#: Files a merge reads from a model folder (weights, config, tokenizer); the local content hash
#: covers exactly these, and the downloader picks its files among them.
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    *META_FILES,
)


def resolve_revisions(
    recipe: Recipe, *, api: HfApi | None = None, token: str | None = None
) -> list[LockedUpstream]:
    """Resolve every upstream of `recipe` (base first) to a revision; files are left empty."""
    api = api or HfApi(token=token)
    return [
        resolve_upstream(ref, api=api, role=_role(recipe, ref), field=recipe_field(recipe, ref))
        for ref in recipe.upstreams()
    ]


def resolve_upstream(
    ref: ModelRef, *, api: HfApi, role: Role = "model", field: str | None = None
) -> LockedUpstream:
    """Resolve one reference: a full commit sha for a Hub repo, a content hash for a folder."""
    if ref.is_local:
        assert ref.path is not None
        return LockedUpstream(
            key=ref.key, revision=local_revision(ref.path, key=ref.key), role=role
        )
    assert ref.repo_id is not None
    tracked = ref.revision or "main"
    repo_id, sha = _resolve_on_hub(api, ref.repo_id, tracked, field)
    if repo_id != ref.repo_id:
        logger.info("upstream %s was renamed to %s; recording the new id", ref.repo_id, repo_id)
    if FULL_SHA.match(tracked) and sha != tracked:
        raise UpstreamError(
            f"upstream {ref.repo_id!r} pinned at {tracked} resolved to another commit ({sha})",
            repo_id=ref.repo_id,
            revision=tracked,
            hint="report this: the Hub should answer a pinned sha with itself",
        )
    logger.debug("upstream %s@%s -> %s", repo_id, tracked, sha)
    return LockedUpstream(key=ref.key, repo_id=repo_id, tracked=tracked, revision=sha, role=role)


def _role(recipe: Recipe, ref: ModelRef) -> Role:
    return "base" if ref == recipe.base_model else "model"


def recipe_field(recipe: Recipe, ref: ModelRef) -> str | None:
    """Where the recipe names `ref` (`base_model` or `models[2].model`), for error hints."""
    if ref == recipe.base_model:
        return "base_model"
    return next((f"{m.field}.model" for m in recipe.models if m.ref == ref), None)


def _resolve_on_hub(api: HfApi, repo_id: str, tracked: str, field: str | None) -> tuple[str, str]:
    try:
        info = retry_hub_call(
            lambda: api.model_info(repo_id, revision=tracked, expand=["sha"]),
            what=f"model_info({repo_id!r}, revision={tracked!r})",
        )
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise upstream_error(err, repo_id, tracked, field) from err
    if not info.sha or not FULL_SHA.match(info.sha):
        raise UpstreamError(
            f"the Hub gave no commit sha for upstream {repo_id!r} at {tracked!r}: {info.sha!r}",
            repo_id=repo_id,
            revision=tracked,
            hint=f"check that HF_ENDPOINT ({constants.ENDPOINT}) is a Hugging Face Hub",
        )
    return info.id, info.sha


def upstream_error(
    err: BaseException, repo_id: str, revision: str | None, field: str | None = None
) -> UpstreamError:
    """Turn a Hub failure about upstream `repo_id` into a distinct, actionable `UpstreamError`."""
    where = f"`{field}` in the recipe" if field else "the recipe"
    url = f"{constants.ENDPOINT}/{repo_id}"
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # hf_hub_download wraps a failed HEAD call (5xx, lost connection)
    # GatedRepoError subclasses RepositoryNotFoundError, so it must be matched first.
    if isinstance(err, GatedRepoError):
        message = f"upstream {repo_id!r} is gated and the token has no access to it"
        hint = f"request access at {url}, then run with an HF_TOKEN of the account that has it"
    elif isinstance(err, RepositoryNotFoundError):
        message = f"upstream {repo_id!r} was not found: it is private, deleted or misspelled"
        hint = f"check {where}, or run with an HF_TOKEN that can read {url}"
    elif isinstance(err, RevisionNotFoundError):
        message = f"upstream {repo_id!r} has no revision {revision!r} (deleted branch or tag?)"
        hint = f"update {where} to an existing branch, tag or commit sha"
    elif isinstance(err, RemoteEntryNotFoundError):
        message = f"upstream {repo_id!r} at {revision} lacks a file the merge needs ({err})"
        hint = f"check the repo's files at {url}/tree/{revision}"
    elif status_of(err) is None:
        message = f"cannot reach the Hub for upstream {repo_id!r} ({describe(err)})"
        hint = f"check the network and HF_ENDPOINT ({constants.ENDPOINT}), then rerun"
    else:
        message = f"the Hub failed on upstream {repo_id!r}: {describe(err)}"
        hint = "rerun later; nothing was merged or published"
    return UpstreamError(message, repo_id=repo_id, revision=revision, hint=hint)


# --------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------


def is_model_file(name: str) -> bool:
    """Whether a top-level file `name` is one a merge reads (weights, config, tokenizer)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def local_files(folder: Path, *, key: str | None = None) -> tuple[LockedFile, ...]:
    """The model files of a local folder with their sizes and sha256, sorted by path."""
    if not folder.is_dir():
        raise UpstreamError(
            f"local upstream {key or str(folder)!r} is not a folder ({folder})",
            hint="check the path in the recipe; relative paths start at the recipe's folder",
        )
    return tuple(
        LockedFile(path=path.name, size=path.stat().st_size, sha256=file_sha256(path))
        for path in _model_files(folder)
    )


def local_revision(folder: Path, *, key: str | None = None) -> str:
    """`sha256:<hex>` over the names, sizes and hashes of a folder's model files."""
    files = local_files(folder, key=key)
    if not files:
        raise UpstreamError(
            f"local upstream {key or str(folder)!r} holds no model files ({folder})",
            hint="it needs config.json and *.safetensors (or pytorch_model*.bin) weights",
        )
    return content_revision(files)


def content_revision(files: Sequence[LockedFile]) -> str:
    """`sha256:<hex>` over the names, sizes and sha256 of `files` (in the given order)."""
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item.path}\0{item.size}\0{item.sha256}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _model_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_model_file(path.name):
            yield path


def file_sha256(path: Path, *, chunk_size: int = 8 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
