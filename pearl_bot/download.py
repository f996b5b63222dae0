"""Fetch the files a merge needs, at the exact resolved revision, through huggingface_hub.

Per Hub upstream: one `model_info(files_metadata=True)` call lists the files at the resolved
sha with their sizes and hashes; the downloader then takes only what a merge reads (config,
generation config, tokenizer files, and the weights: the safetensors index and the shards it
names, or a single safetensors file; pickle `.bin` weights only with `allow_pickle` and only
when a repo has no safetensors). Files go through `hf_hub_download` into the Hub cache
(`cache_dir` lets an Action persist it) and each is checked against the listed size and hash
(sha256 for LFS files, the git blob sha1 otherwise) before `fetch_models` returns, so a failed
or incomplete download raises an `UpstreamError` and never reaches the merge.

`fetch_models` returns a `FetchedModels`: a dict `ModelRef.key -> folder` for the merge engine
whose `.upstreams` also records, per upstream, the files it contributed for the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoSibling

from pearl_bot.errors import UpstreamError
from pearl_bot.hub_retry import retry_hub_call
from pearl_bot.lock import Lock, LockedFile, LockedUpstream
from pearl_bot.recipe import ModelRef, Recipe
from pearl_bot.upstream import (
    META_FILES,
    content_revision,
    file_sha256,
    local_files,
    recipe_field,
    resolve_revisions,
    upstream_error,
)

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


class FetchedModels(dict[str, Path]):
    """`ModelRef.key -> local folder`, plus `.upstreams`: each upstream with its files."""

    def __init__(self, folders: dict[str, Path], upstreams: Sequence[LockedUpstream]) -> None:
        super().__init__(folders)
        self.upstreams: tuple[LockedUpstream, ...] = tuple(upstreams)


def fetch_models(
    recipe: Recipe,
    *,
    lock_path: str | Path | None = None,
    upstreams: Sequence[LockedUpstream] | None = None,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> FetchedModels:
    """Fetch every upstream of `recipe` at its pinned revision; local folders map to themselves.

    Revisions come from `upstreams` if given, else from the lock at `lock_path`, else they are
    resolved now. Raises `UpstreamError` (nothing returned) if any file cannot be fetched whole.
    """
    api = HfApi(token=token)
    pinned = pinned_upstreams(recipe, lock_path=lock_path, upstreams=upstreams, api=api)
    refs = {ref.key: ref for ref in recipe.upstreams()}
    folders: dict[str, Path] = {}
    done: list[LockedUpstream] = []
    for up in pinned:
        field = recipe_field(recipe, refs[up.key])
        folder, files = fetch_upstream(
            up, refs[up.key], api=api, allow_pickle=allow_pickle, cache_dir=cache_dir, field=field
        )
        folders[up.key] = folder
        done.append(up.model_copy(update={"files": files}))
    return FetchedModels(folders, done)


def pinned_upstreams(
    recipe: Recipe,
    *,
    lock_path: str | Path | None,
    upstreams: Sequence[LockedUpstream] | None,
    api: HfApi,
) -> list[LockedUpstream]:
    """The revision of every upstream of `recipe`, in recipe order, from the best source."""
    if upstreams is None and lock_path is None:
        return resolve_revisions(recipe, api=api)
    source = f"lock {lock_path}" if upstreams is None else "the given upstreams"
    if upstreams is None:
        assert lock_path is not None
        upstreams = _read_lock(Path(lock_path)).upstreams
    by_key = {up.key: up for up in upstreams}
    missing = [ref.key for ref in recipe.upstreams() if ref.key not in by_key]
    if missing:
        raise UpstreamError(
            f"{source} has no revision for upstream {missing[0]!r}",
            hint="rerun without --lock, or regenerate the lock from this recipe",
        )
    return [by_key[ref.key] for ref in recipe.upstreams()]


def _read_lock(path: Path) -> Lock:
    try:
        return Lock.read(path)
    except FileNotFoundError:
        raise UpstreamError(f"lock file {str(path)!r} not found", hint="check --lock") from None
    except ValueError as err:
        raise UpstreamError(
            f"lock file {str(path)!r} is not a valid pearl-bot lock ({err})".splitlines()[0],
            hint="regenerate it with `pearl-bot run`, or drop --lock",
        ) from err


def fetch_upstream(
    up: LockedUpstream,
    ref: ModelRef,
    *,
    api: HfApi,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
    field: str | None = None,
) -> tuple[Path, tuple[LockedFile, ...]]:
    """Fetch one upstream; returns its local folder and the files the merge will read."""
    if ref.is_local:
        assert ref.path is not None
        return ref.path, _check_local(up, ref.path)
    assert up.repo_id is not None
    siblings = _list_files(api, up, field)
    names = _select_files(up, siblings, allow_pickle)
    folder = None
    for name in names:
        path = _download_verified(api, up, siblings[name], cache_dir, field)
        folder = path.parent
        if name.endswith(".index.json"):
            names.extend(_index_shards(up, path, siblings, field))
    assert folder is not None
    logger.info("fetched %s@%s: %d files", up.repo_id, up.revision[:12], len(names))
    return folder, tuple(_locked_file(siblings[name]) for name in sorted(names))


def _check_local(up: LockedUpstream, folder: Path) -> tuple[LockedFile, ...]:
    files = local_files(folder, key=up.key)
    if content_revision(files) != up.revision:
        raise UpstreamError(
            f"local upstream {up.key!r} changed since it was resolved ({up.revision[:19]}...)",
            hint="rerun to resolve it again, or restore the folder's files",
        )
    return files


def _list_files(api: HfApi, up: LockedUpstream, field: str | None) -> dict[str, RepoSibling]:
    """Top-level files of the upstream at its revision, with sizes and hashes."""
    assert up.repo_id is not None
    repo_id = up.repo_id
    try:
        info = retry_hub_call(
            lambda: api.model_info(repo_id, revision=up.revision, files_metadata=True),
            what=f"model_info({repo_id!r}, revision={up.revision[:12]!r}, files_metadata=True)",
        )
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise upstream_error(err, repo_id, up.revision, field) from err
    return {s.rfilename: s for s in info.siblings or () if "/" not in s.rfilename}


def _select_files(
    up: LockedUpstream, siblings: dict[str, RepoSibling], allow_pickle: bool
) -> list[str]:
    """Config and tokenizer files, then the weights: an index (shards added later) or files."""
    if "config.json" not in siblings:
        raise _missing(up, "config.json", "a merge needs the model's config.json")
    meta = [name for name in META_FILES if name in siblings]
    safetensors = sorted(n for n in siblings if n.endswith(".safetensors"))
    if SAFETENSORS_INDEX in siblings:
        return meta + [SAFETENSORS_INDEX]
    if safetensors:
        single = "model.safetensors" in siblings
        return meta + (["model.safetensors"] if single else safetensors)
    pickles = sorted(n for n in siblings if n.startswith("pytorch_model") and n.endswith(".bin"))
    if not pickles:
        raise _missing(up, "*.safetensors", "the repo has no safetensors or pytorch_model weights")
    if not allow_pickle:
        raise UpstreamError(
            f"upstream {up.repo_id!r} has only pickle weights ({pickles[0]}, ...)",
            repo_id=up.repo_id,
            revision=up.revision,
            hint="pass --allow-pickle to load them with torch.load(weights_only=True)",
        )
    return meta + ([PICKLE_INDEX] if PICKLE_INDEX in siblings else pickles)


def _index_shards(
    up: LockedUpstream, index_path: Path, siblings: dict[str, RepoSibling], field: str | None
) -> list[str]:
    """The shard files an index names, each checked to exist in the repo."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UpstreamError(
            f"upstream {up.repo_id!r} has a malformed {index_path.name} ({err!r})",
            repo_id=up.repo_id,
            revision=up.revision,
            hint="pin the upstream to a revision with a valid index",
        ) from err
    for shard in shards:
        if shard not in siblings:
            raise _missing(up, shard, f"{index_path.name} names it but the repo lacks it")
    return [s for s in shards if isinstance(s, str)]


def _missing(up: LockedUpstream, name: str, why: str) -> UpstreamError:
    return UpstreamError(
        f"upstream {up.repo_id!r} at {up.revision[:12]} has no {name} ({why})",
        repo_id=up.repo_id,
        revision=up.revision,
        hint="pin the upstream to a revision that has it, or pick another model",
    )


def _download_verified(
    api: HfApi,
    up: LockedUpstream,
    sibling: RepoSibling,
    cache_dir: str | Path | None,
    field: str | None,
) -> Path:
    """Download one file and check its size and hash; a bad copy is fetched once more."""
    path = _download(api, up, sibling.rfilename, cache_dir, field, force=False)
    if _matches(path, sibling):
        return path
    logger.warning("%s/%s failed its hash check; downloading again", up.repo_id, sibling.rfilename)
    path = _download(api, up, sibling.rfilename, cache_dir, field, force=True)
    if _matches(path, sibling):
        return path
    _evict(path)
    raise UpstreamError(
        f"{sibling.rfilename} of upstream {up.repo_id!r}@{up.revision[:12]} does not match "
        "the size and hash the Hub lists for it",
        repo_id=up.repo_id,
        revision=up.revision,
        hint="rerun; if it persists, the Hub copy is damaged: pin another revision",
    )


def _download(
    api: HfApi,
    up: LockedUpstream,
    name: str,
    cache_dir: str | Path | None,
    field: str | None,
    *,
    force: bool,
) -> Path:
    assert up.repo_id is not None
    logger.debug("downloading %s/%s@%s", up.repo_id, name, up.revision[:12])
    try:
        return Path(
            api.hf_hub_download(
                up.repo_id, name, revision=up.revision, cache_dir=cache_dir, force_download=force
            )
        )
    except (HfHubHTTPError, httpx2.TransportError, OSError, ValueError) as err:
        # OSError also covers the client's "Consistency check failed" on a short download.
        raise upstream_error(err, up.repo_id, up.revision, field) from err


def _matches(path: Path, sibling: RepoSibling) -> bool:
    size = path.stat().st_size
    if sibling.lfs is not None:
        return size == sibling.lfs.size and file_sha256(path) == sibling.lfs.sha256
    if sibling.size is not None and size != sibling.size:
        return False
    return sibling.blob_id is None or git_blob_id(path) == sibling.blob_id


def _evict(path: Path) -> None:
    """Remove a damaged cached file (the snapshot link and the blob it points at)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def git_blob_id(path: Path) -> str:
    """The git blob sha1 of a file: sha1(b"blob <size>\\0" + content)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _locked_file(sibling: RepoSibling) -> LockedFile:
    if sibling.lfs is not None:
        return LockedFile(path=sibling.rfilename, size=sibling.lfs.size, sha256=sibling.lfs.sha256)
    return LockedFile(path=sibling.rfilename, size=sibling.size or 0, blob_id=sibling.blob_id)
