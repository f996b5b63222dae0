"""The local Hub answers the real huggingface_hub client the way the real Hub does."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pearl_bot.testing.hub_server import LocalHub, LocalHubError, git_blob_sha1

REPO = "org/upstream"
CONFIG = b'{"hidden_size": 4}'
README = "---\nlicense: apache-2.0\nbase_model: org/base\ntags:\n- merge\n---\n# Upstream\n"


def _safetensors(n: int = 6) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, n // 2], "data_offsets": [0, 4 * n]}})
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(4 * n)


@pytest.fixture
def seeded(local_hub: LocalHub) -> str:
    """A public repo with a README, a config, an LFS weights file and a nested file."""
    return local_hub.commit(
        REPO,
        {
            "README.md": README,
            "config.json": '{"hidden_size": 4}',
            "model.safetensors": _safetensors(),
            "sub/dir/notes.txt": "hello",
        },
        message="seed files",
    )


# -- read side --------------------------------------------------------------------------------


def test_model_info_has_sha_siblings_and_card_data(hub_api: HfApi, seeded: str) -> None:
    info = hub_api.model_info(REPO, files_metadata=True)

    assert info.id == REPO and info.sha == seeded
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "sub/dir/notes.txt",
    }
    weights = siblings["model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(_safetensors()).hexdigest()
    assert weights.size == len(_safetensors())
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(b'{"hidden_size": 4}')
    assert info.card_data is not None and info.card_data.base_model == "org/base"
    assert info.safetensors is not None and info.safetensors.total == 6


def test_siblings_carry_only_names_without_files_metadata(hub_api: HfApi, seeded: str) -> None:
    info = hub_api.model_info(REPO)

    assert all(s.size is None and s.lfs is None for s in info.siblings or [])


def test_model_info_at_revision_and_expand(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    second = local_hub.commit(REPO, {"config.json": "{}"})

    assert hub_api.model_info(REPO, revision=seeded).sha == seeded
    assert hub_api.model_info(REPO).sha == second
    slim = hub_api.model_info(REPO, expand=["sha", "lastModified", "gated", "private"])
    assert slim.id == REPO and slim.sha == second and slim.gated is False
    assert slim.siblings is None


def test_unknown_repo_and_revision_raise_the_clients_errors(hub_api: HfApi, seeded: str) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(REPO, revision="nope")


def test_refs_list_branches_tags_and_prs(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    local_hub.create_branch(REPO, "dev")
    local_hub.create_tag(REPO, "v1", revision=seeded)
    num = local_hub.open_pull_request(REPO, "bump")

    refs = hub_api.list_repo_refs(REPO, include_pull_requests=True)

    assert {b.name: b.target_commit for b in refs.branches} == {"main": seeded, "dev": seeded}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", seeded)]
    assert [p.ref for p in refs.pull_requests or []] == [f"refs/pr/{num}"]


def test_commits_listing_is_newest_first_and_paginated(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    shas = [local_hub.commit(REPO, {"n.txt": str(i)}, message=f"step {i}") for i in range(4)]
    local_hub.commits_page_size = 2

    commits = hub_api.list_repo_commits(REPO)

    assert [c.commit_id for c in commits] == [*reversed(shas), seeded, commits[-1].commit_id]
    assert commits[0].title == "step 3" and commits[-1].title == "initial commit"
    pages = [r for r in local_hub.requests if "/commits/" in r.path]
    assert len(pages) == 3 and "cursor=2" in pages[1].path


def test_tree_recursive_paginated_and_paths_info(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    local_hub.tree_page_size = 3

    items = {i.path: i for i in hub_api.list_repo_tree(REPO, recursive=True)}
    top = [i.path for i in hub_api.list_repo_tree(REPO)]
    infos = hub_api.get_paths_info(REPO, ["config.json", "sub", "missing.txt"])

    assert set(items) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "sub",
        "sub/dir",
        "sub/dir/notes.txt",
    }
    assert items["model.safetensors"].lfs.sha256 == hashlib.sha256(_safetensors()).hexdigest()  # type: ignore[union-attr]
    assert items["config.json"].blob_id == git_blob_sha1(b'{"hidden_size": 4}')  # type: ignore[union-attr]
    assert "sub/dir" not in top and "sub" in top
    assert [i.path for i in infos] == ["config.json", "sub"]


def test_tree_expand_reports_last_commit(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    later = local_hub.commit(REPO, {"config.json": "{}"}, message="touch config")

    items = {i.path: i for i in hub_api.list_repo_tree(REPO, expand=True)}

    assert items["config.json"].last_commit.oid == later  # type: ignore[union-attr]
    assert items["README.md"].last_commit.oid == seeded  # type: ignore[union-attr]


def test_download_regular_and_lfs_files(local_hub: LocalHub, seeded: str, tmp_path: Path) -> None:
    config = hf_hub_download(REPO, "config.json", cache_dir=tmp_path)
    weights = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path)
    nested = hf_hub_download(REPO, "sub/dir/notes.txt", revision=seeded, cache_dir=tmp_path)

    assert Path(config).read_text() == '{"hidden_size": 4}'
    assert Path(weights).read_bytes() == _safetensors()
    assert Path(nested).read_text() == "hello"
    cdn = [r for r in local_hub.requests if r.path.startswith("/_cdn/")]
    assert [r.method for r in cdn] == ["GET"]
    assert "authorization" not in {k.lower() for k in cdn[0].headers}


def test_resolve_headers_match_the_hub(local_hub: LocalHub, seeded: str) -> None:
    lfs = httpx2.head(f"{local_hub.url}/{REPO}/resolve/main/model.safetensors")
    plain = httpx2.head(f"{local_hub.url}/{REPO}/resolve/main/config.json")

    assert lfs.status_code == 302 and lfs.headers["x-repo-commit"] == seeded
    assert lfs.headers["x-linked-etag"] == f'"{hashlib.sha256(_safetensors()).hexdigest()}"'
    assert lfs.headers["x-linked-size"] == str(len(_safetensors()))
    assert lfs.headers["location"].startswith(local_hub.cdn_url)
    assert plain.status_code == 200 and plain.headers["content-length"] == "18"
    assert plain.headers["etag"] == '"' + git_blob_sha1(CONFIG) + '"'


def test_range_requests_answer_206_and_416(local_hub: LocalHub, seeded: str) -> None:
    url = f"{local_hub.url}/{REPO}/resolve/main/config.json"

    part = httpx2.get(url, headers={"Range": "bytes=2-7"})
    tail = httpx2.get(url, headers={"Range": "bytes=-3"})
    bad = httpx2.get(url, headers={"Range": "bytes=99-"})

    assert part.status_code == 206 and part.content == b"hidden"
    assert part.headers["content-range"] == "bytes 2-7/18"
    assert tail.content == b": 4}"[-3:]
    assert bad.status_code == 416 and bad.headers["content-range"] == "bytes */18"


def test_missing_file_is_entry_not_found_with_commit(
    local_hub: LocalHub, seeded: str, tmp_path: Path
) -> None:
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.json", cache_dir=tmp_path)
    answer = httpx2.head(f"{local_hub.url}/{REPO}/resolve/main/nope.json")
    assert answer.headers["x-error-code"] == "EntryNotFound"
    assert answer.headers["x-repo-commit"] == seeded


def test_snapshot_download_fetches_every_file(
    local_hub: LocalHub, seeded: str, tmp_path: Path
) -> None:
    folder = Path(snapshot_download(REPO, cache_dir=tmp_path))

    assert (folder / "sub/dir/notes.txt").read_text() == "hello"
    assert (folder / "model.safetensors").read_bytes() == _safetensors()
    assert folder.name == seeded


def test_model_card_loads_from_the_hub(local_hub: LocalHub, seeded: str) -> None:
    card = ModelCard.load(REPO)

    assert card.data.license == "apache-2.0" and "# Upstream" in card.text


# -- write side -------------------------------------------------------------------------------


def test_create_repo_and_conflict_keeps_url(local_hub: LocalHub, hub_api: HfApi) -> None:
    url = hub_api.create_repo("pearl-bot-tester/merged")

    again = hub_api.create_repo("pearl-bot-tester/merged", exist_ok=True)

    assert url.repo_id == again.repo_id == "pearl-bot-tester/merged"
    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.create_repo("pearl-bot-tester/merged")
    assert caught.value.response.status_code == 409
    assert local_hub.files("pearl-bot-tester/merged").keys() == {".gitattributes"}


def test_anonymous_write_is_401(local_hub: LocalHub) -> None:
    with pytest.raises(HfHubHTTPError) as caught:
        HfApi(endpoint=local_hub.url).create_repo("someone/x")
    assert caught.value.response.status_code == 401


def test_create_commit_with_lfs_and_regular_files(local_hub: LocalHub, hub_api: HfApi) -> None:
    hub_api.create_repo("org/merged")
    weights = _safetensors(8)

    info = hub_api.create_commit(
        "org/merged",
        [
            CommitOperationAdd("model.safetensors", weights),
            CommitOperationAdd("README.md", README.encode()),
        ],
        commit_message="release 1",
        commit_description="merged from upstreams",
    )

    assert info.oid == local_hub.head("org/merged")
    assert local_hub.read_file("org/merged", "model.safetensors") == weights
    latest = local_hub.list_commits("org/merged")[0]
    assert (latest["title"], latest["message"], latest["author"]) == (
        "release 1",
        "merged from upstreams",
        "pearl-bot-tester",
    )
    paths = [r.path for r in local_hub.requests]
    assert any(p.endswith(".git/info/lfs/objects/batch") for p in paths)
    assert any(p.startswith("/_lfs/") for p in paths)
    assert any(p == "/api/validate-yaml" for p in paths)


def test_preupload_then_one_atomic_commit_skips_reupload(
    local_hub: LocalHub, hub_api: HfApi
) -> None:
    hub_api.create_repo("org/merged")
    shards = [
        CommitOperationAdd(f"model-0000{i}.safetensors", _safetensors(2 * i + 2)) for i in range(2)
    ]
    hub_api.preupload_lfs_files("org/merged", additions=shards)
    puts_before = sum(r.method == "PUT" for r in local_hub.requests)

    hub_api.create_commit("org/merged", shards, commit_message="two shards")

    assert puts_before == 2 and sum(r.method == "PUT" for r in local_hub.requests) == 2
    assert len(local_hub.list_commits("org/merged")) == 2
    assert set(local_hub.files("org/merged")) >= {
        "model-00000.safetensors",
        "model-00001.safetensors",
    }


def test_noop_commit_creates_nothing(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    hub_api.create_commit(
        REPO, [CommitOperationAdd("config.json", b'{"hidden_size": 4}')], commit_message="same"
    )

    assert local_hub.head(REPO) == seeded


def test_stale_parent_commit_is_412(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    moved = local_hub.commit(REPO, {"x.txt": "1"})
    ops = [CommitOperationAdd("y.txt", b"2")]

    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.create_commit(REPO, ops, commit_message="late", parent_commit=seeded)
    ok = hub_api.create_commit(REPO, ops, commit_message="fresh", parent_commit=moved[:7])

    assert caught.value.response.status_code == 412
    assert "A commit has happened since" in (caught.value.server_message or "")
    assert local_hub.list_commits(REPO)[0]["parents"] == [moved] and ok.oid == local_hub.head(REPO)


def test_delete_file_and_folder(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    hub_api.create_commit(
        REPO,
        [CommitOperationDelete("config.json"), CommitOperationDelete("sub/", is_folder=True)],
        commit_message="prune",
    )

    assert set(local_hub.files(REPO)) == {".gitattributes", "README.md", "model.safetensors"}


def test_invalid_readme_metadata_is_rejected(hub_api: HfApi, seeded: str) -> None:
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        hub_api.create_commit(
            REPO, [CommitOperationAdd("README.md", b"---\n: [\n---\n")], commit_message="bad card"
        )


def test_upload_folder_lands_as_one_commit(
    local_hub: LocalHub, hub_api: HfApi, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(_safetensors())
    (tmp_path / "out" / "config.json").write_text("{}")
    hub_api.create_repo("org/merged")

    hub_api.upload_folder(repo_id="org/merged", folder_path=tmp_path / "out", commit_message="up")

    assert len(local_hub.list_commits("org/merged")) == 2
    assert local_hub.read_file("org/merged", "model.safetensors") == _safetensors()


# -- pull requests, discussions, tags ------------------------------------------------------------


def test_commit_with_create_pr_opens_a_pr(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    info = hub_api.create_commit(
        REPO,
        [CommitOperationAdd("config.json", b"{}")],
        commit_message="bot update",
        commit_description="why",
        create_pr=True,
    )

    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert local_hub.head(REPO) == seeded
    assert local_hub.head(REPO, "refs/pr/1") == info.oid
    (pr,) = local_hub.pull_requests(REPO)
    assert (pr["title"], pr["description"], pr["status"]) == ("bot update", "why", "open")
    details = hub_api.get_discussion_details(REPO, 1)
    assert details.is_pull_request and details.target_branch == "refs/heads/main"
    assert "config.json" in (details.diff or "")


def test_update_pr_then_merge(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    pr = hub_api.create_pull_request(REPO, title="nightly merge")
    assert pr.status == "draft"
    hub_api.create_commit(
        REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="c1", revision=pr.git_reference
    )
    hub_api.comment_discussion(REPO, pr.num, "looks good")
    local_hub.commit(REPO, {"b.txt": "b"})  # main moves meanwhile, no conflict

    hub_api.merge_pull_request(REPO, pr.num)

    assert local_hub.read_file(REPO, "a.txt") == b"a" and local_hub.read_file(REPO, "b.txt") == b"b"
    details = hub_api.get_discussion_details(REPO, pr.num)
    assert details.status == "merged" and details.merge_commit_oid == local_hub.head(REPO)
    assert [e.type for e in details.events] == ["comment", "commit", "comment", "status-change"]


def test_discussions_listing_filters(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    hub_api.create_discussion(REPO, title="question")
    pr = hub_api.create_pull_request(REPO, title="a pr")
    hub_api.change_discussion_status(REPO, pr.num, "closed")

    prs = list(hub_api.get_repo_discussions(REPO, discussion_type="pull_request"))
    open_items = list(hub_api.get_repo_discussions(REPO, discussion_status="open"))

    assert [(d.num, d.status) for d in prs] == [(2, "closed")]
    assert [d.title for d in open_items] == ["question"]


def test_tags_and_branches_over_http(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    hub_api.create_tag(REPO, tag="v1")
    hub_api.create_branch(REPO, branch="dev", revision=seeded)
    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.create_tag(REPO, tag="v1")
    hub_api.create_tag(REPO, tag="v1", exist_ok=True)
    hub_api.delete_branch(REPO, branch="dev")

    assert caught.value.response.status_code == 409
    assert local_hub.head(REPO, "v1") == seeded
    with pytest.raises(LocalHubError):
        local_hub.head(REPO, "dev")


# -- access control -------------------------------------------------------------------------------


def test_private_repo_is_401_anonymous_404_authenticated(
    local_hub: LocalHub, hub_api: HfApi
) -> None:
    local_hub.create_repo("org/secret", private=True)
    anonymous = httpx2.get(f"{local_hub.url}/api/models/org/secret")
    local_hub.grant_access("org/secret", "pearl-bot-tester")

    assert anonymous.status_code == 401 and anonymous.headers["x-error-code"] == "RepoNotFound"
    assert hub_api.model_info("org/secret").private is True
    with pytest.raises(RepositoryNotFoundError) as caught:
        HfApi(endpoint=local_hub.url, token="hf_other").model_info("org/secret")
    assert caught.value.response.status_code == 404


def test_gated_repo_info_is_public_files_are_not(
    local_hub: LocalHub, hub_api: HfApi, tmp_path: Path
) -> None:
    local_hub.create_repo("org/gated", gated="manual")
    local_hub.commit("org/gated", {"config.json": "{}"})

    assert hub_api.model_info("org/gated").gated == "manual"
    with pytest.raises(GatedRepoError) as anonymous:
        hf_hub_download("org/gated", "config.json", cache_dir=tmp_path)
    with pytest.raises(GatedRepoError) as refused:
        hf_hub_download("org/gated", "config.json", cache_dir=tmp_path, token="hf_test_bot")
    local_hub.grant_access("org/gated", "pearl-bot-tester")
    granted = hf_hub_download("org/gated", "config.json", cache_dir=tmp_path, token="hf_test_bot")

    assert anonymous.value.response.status_code == 401
    assert refused.value.response.status_code == 403
    assert Path(granted).read_text() == "{}"


def test_owned_repo_refuses_other_writers(local_hub: LocalHub, hub_api: HfApi) -> None:
    local_hub.create_repo("alice/model", owner="alice")

    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.create_commit("alice/model", [CommitOperationAdd("x", b"1")], commit_message="x")
    assert caught.value.response.status_code == 403


def test_whoami_and_xet_refusal(local_hub: LocalHub, hub_api: HfApi) -> None:
    local_hub.create_repo("org/x")

    assert hub_api.whoami()["name"] == "pearl-bot-tester"
    unknown = HfApi(endpoint=local_hub.url, token="hf_abcdefgh").whoami()
    xet = httpx2.get(f"{local_hub.url}/api/models/org/x/xet-write-token/main")

    assert unknown["name"] == "user-hf_abc"
    assert xet.status_code == 501 and "HF_HUB_DISABLE_XET" in xet.json()["error"]
    assert httpx2.get(f"{local_hub.url}/api/agent-harnesses").status_code == 404


def test_renamed_repo_redirects(
    local_hub: LocalHub, hub_api: HfApi, seeded: str, tmp_path: Path
) -> None:
    local_hub.rename_repo(REPO, "org/renamed")

    info = hub_api.model_info(REPO)
    path = hf_hub_download(REPO, "config.json", cache_dir=tmp_path)

    assert info.id == "org/renamed" and info.sha == seeded
    assert Path(path).read_text() == '{"hidden_size": 4}'
    assert any(r.status == 307 for r in local_hub.requests)


# -- faults ---------------------------------------------------------------------------------------


def test_rate_limit_fault_is_retried_with_its_headers(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    headers = {
        "RateLimit": '"api";r=0;t=0',
        "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
        "Retry-After": "0",
    }
    local_hub.add_fault("GET", r"/commits/", status=429, headers=headers)

    commits = hub_api.list_repo_commits(REPO)

    assert commits[0].commit_id == seeded
    statuses = [r.status for r in local_hub.requests if "/commits/" in r.path]
    assert statuses == [429, 200]


def test_fault_without_retry_surfaces_and_is_used_once(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    local_hub.add_fault("GET", r"^/api/models/org/upstream$", status=503, body="down")

    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.model_info(REPO)

    assert caught.value.response.status_code == 503
    assert hub_api.model_info(REPO).sha == seeded


def test_commit_lands_but_answer_is_500(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    local_hub.add_fault("POST", r"/commit/main", status=500, after_handling=True)

    with pytest.raises(HfHubHTTPError):
        hub_api.create_commit(REPO, [CommitOperationAdd("z.txt", b"z")], commit_message="lost")

    assert local_hub.list_commits(REPO)[0]["title"] == "lost"


def test_dropped_download_is_resumed(local_hub: LocalHub, seeded: str, tmp_path: Path) -> None:
    local_hub.add_fault("GET", r"^/_cdn/", drop_after_bytes=10)

    path = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path)

    assert Path(path).read_bytes() == _safetensors()
    cdn = [r for r in local_hub.requests if r.path.startswith("/_cdn/")]
    # The client resumes with `Range: bytes=<n>-` only when the partial chunk reached its file.
    wanted = {k.lower(): v for k, v in cdn[1].headers.items()}.get("range")
    assert len(cdn) == 2 and cdn[1].status == (206 if wanted else 200)


def test_dropped_commit_answer_still_commits(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    local_hub.add_fault("POST", r"/commit/", drop_after_bytes=5)

    with pytest.raises(httpx2.HTTPError):
        hub_api.create_commit(REPO, [CommitOperationAdd("d.txt", b"d")], commit_message="dropped")

    assert local_hub.read_file(REPO, "d.txt") == b"d"


def test_reset_forgets_everything(local_hub: LocalHub, seeded: str) -> None:
    local_hub.add_fault("GET", ".*")
    local_hub.add_user("t", "u")

    local_hub.reset()

    assert local_hub.requests == [] and local_hub.user_for("Bearer t") == "user-t"
    assert httpx2.get(f"{local_hub.url}/api/models/{REPO}").status_code == 401


# -- more of the protocol --------------------------------------------------------------------------


def test_validate_yaml_answers_json_both_ways(local_hub: LocalHub) -> None:
    good = ModelCard(README)
    bad = ModelCard("---\nbase_model: org/a\nbase_model_relation: blend\n---\ntext")

    good.validate()
    with pytest.raises(ValueError, match="base_model_relation"):
        bad.validate()
    assert [r.status for r in local_hub.requests] == [200, 400]


def test_pr_against_parent_commit_and_pr_ref_reads(
    local_hub: LocalHub, hub_api: HfApi, seeded: str, tmp_path: Path
) -> None:
    moved = local_hub.commit(REPO, {"later.txt": "x"})

    info = hub_api.create_commit(
        REPO,
        [CommitOperationAdd("pr.txt", b"p")],
        commit_message="pr",
        create_pr=True,
        parent_commit=seeded,
    )

    assert local_hub.list_commits(REPO, "refs/pr/1")[1]["id"] == seeded
    assert [c.commit_id for c in hub_api.list_repo_commits(REPO, revision="refs/pr/1")][:2] == [
        info.oid,
        seeded,
    ]
    pr_file = hf_hub_download(REPO, "pr.txt", revision="refs/pr/1", cache_dir=tmp_path)
    assert Path(pr_file).read_text() == "p" and local_hub.head(REPO) == moved


def test_merge_conflict_is_409(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    num = local_hub.open_pull_request(REPO, "conflicting")
    local_hub.commit(REPO, {"config.json": "pr"}, branch=f"refs/pr/{num}")
    local_hub.commit(REPO, {"config.json": "main"})

    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.merge_pull_request(REPO, num)

    assert caught.value.response.status_code == 409 and "config.json" in str(caught.value)
    assert local_hub.pull_requests(REPO)[0]["status"] == "open"


def test_concurrent_commits_all_land_in_order(
    local_hub: LocalHub, hub_api: HfApi, seeded: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def push(i: int) -> str:
        ops = [CommitOperationAdd(f"f{i}.txt", str(i).encode())]
        return hub_api.create_commit(REPO, ops, commit_message=f"c{i}").oid

    with ThreadPoolExecutor(4) as pool:
        oids = set(pool.map(push, range(8)))

    history = local_hub.list_commits(REPO)
    assert oids == {c["id"] for c in history[:8]} and history[8]["id"] == seeded
    assert all(history[i]["parents"] == [history[i + 1]["id"]] for i in range(8))
    assert {f"f{i}.txt" for i in range(8)} <= set(local_hub.files(REPO))


def test_bad_uploads_are_refused(local_hub: LocalHub, hub_api: HfApi, seeded: str) -> None:
    missing = "a" * 64
    line = {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": missing}}
    body = "\n".join(json.dumps(x) for x in ({"key": "header", "value": {"summary": "s"}}, line))
    headers = {"Authorization": "Bearer hf_test_bot", "Content-Type": "application/x-ndjson"}

    commit = httpx2.post(
        f"{local_hub.url}/api/models/{REPO}/commit/main", content=body, headers=headers
    )
    put = httpx2.put(f"{local_hub.url}/_lfs/{REPO}/{missing}/3", content=b"abc")

    assert commit.status_code == 422 and "never uploaded" in commit.json()["error"]
    assert put.status_code == 400 and "does not match" in put.json()["error"]
    assert local_hub.head(REPO) == seeded


def test_settings_move_and_delete_over_http(local_hub: LocalHub, hub_api: HfApi) -> None:
    hub_api.create_repo("pearl-bot-tester/m")
    hub_api.update_repo_settings("pearl-bot-tester/m", private=True, gated="auto")
    hub_api.move_repo("pearl-bot-tester/m", "pearl-bot-tester/n")

    info = hub_api.model_info("pearl-bot-tester/n")
    hub_api.delete_repo("pearl-bot-tester/n")

    assert info.private is True and info.gated == "auto"
    assert not hub_api.repo_exists("pearl-bot-tester/n")


def test_filesystem_range_reads(local_hub: LocalHub, seeded: str) -> None:
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=local_hub.url, skip_instance_cache=True)
    with fs.open(f"{REPO}/model.safetensors", "rb", block_size=16) as handle:
        handle.seek(8)
        chunk = handle.read(20)

    assert chunk == _safetensors()[8:28]
    assert any(r.status == 206 for r in local_hub.requests)


def test_unknown_route_is_a_clear_404(local_hub: LocalHub) -> None:
    answer = httpx2.get(f"{local_hub.url}/api/spaces/org/x")

    assert answer.status_code == 404 and "does not serve GET /api/spaces/org/x" in answer.text


def test_seeding_errors_name_the_problem(local_hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(LocalHubError, match="Repository Not Found"):
        local_hub.head("org/none")
    local_hub.create_repo("org/x")
    with pytest.raises(LocalHubError, match="Invalid rev id: dev"):
        local_hub.files("org/x", "dev")
    with pytest.raises(LocalHubError, match="not a directory"):
        local_hub.commit_folder("org/x", tmp_path / "nope")
    with pytest.raises(LocalHubError, match="Invalid repo id"):
        local_hub.create_repo("a/b/c")


def test_non_safetensors_bytes_give_no_parameter_count(local_hub: LocalHub, hub_api: HfApi) -> None:
    local_hub.commit("org/junk", {"model.safetensors": b"\xff" * 64})

    info = hub_api.model_info("org/junk", files_metadata=True)

    assert info.safetensors is None and info.siblings[-1].lfs is not None  # type: ignore[index]


def test_fault_with_negative_times_persists_until_cleared(local_hub: LocalHub, seeded: str) -> None:
    local_hub.add_fault("HEAD", r"/resolve/", status=504, times=-1)
    url = f"{local_hub.url}/{REPO}/resolve/main/config.json"

    statuses = [httpx2.head(url).status_code for _ in range(3)]
    local_hub.clear_faults()

    assert statuses == [504, 504, 504] and httpx2.head(url).status_code == 200


def test_pr_description_can_be_edited_by_its_author_only(
    local_hub: LocalHub, hub_api: HfApi
) -> None:
    local_hub.create_repo("org/edit")
    pr = hub_api.create_pull_request("org/edit", title="A release", description="first text")
    details = hub_api.get_discussion_details("org/edit", pr.num)
    first = next(e for e in details.events if e.type == "comment")

    edited = hub_api.edit_discussion_comment("org/edit", pr.num, first.id, "second text")

    assert edited.content == "second text" and edited.edited
    again = hub_api.get_discussion_details("org/edit", pr.num)
    assert next(e for e in again.events if e.type == "comment").content == "second text"
    local_hub.add_user("hf_other", "someone-else")
    other = HfApi(endpoint=local_hub.url, token="hf_other")
    local_hub.grant_access("org/edit", "someone-else")
    with pytest.raises(Exception, match="403"):
        other.edit_discussion_comment("org/edit", pr.num, first.id, "hijacked")
