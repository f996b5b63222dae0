"""The nightly loop against the local Hub: release, nothing to do, PR open/update, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_hub import BOT_TOKEN

from pearl_bot.lock import LOCK_FILENAME, Lock
from pearl_bot.recipe import Recipe, load_recipe
from pearl_bot.run import run
from pearl_bot.testing.hub_server import LocalHub, LocalHubError
from pearl_bot.testing.models import (
    TinyConfig,
    build_family,
    fine_tune,
    random_weights,
    write_model,
)

TARGET = "org/merged"
UPSTREAMS = ["org/base", "org/a", "org/b"]
CONFIG = TinyConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=48)

RECIPE = """\
models:
  - model: org/base
  - model: org/a
    parameters: {density: 0.5, weight: 0.6}
  - model: org/b
    parameters: {density: 0.5, weight: 0.4}
merge_method: ties
base_model: org/base
dtype: float32
publish:
  repo_id: org/merged
  create_pr: true
card:
  license: apache-2.0
"""


@pytest.fixture
def family(local_hub: LocalHub, hub_api: object, tmp_path: Path) -> dict[str, str]:
    """Three tiny upstreams published on the local Hub; returns repo id -> head sha."""
    folders = build_family(tmp_path / "upstreams", UPSTREAMS, CONFIG, seed=3)
    heads = {}
    for repo_id, folder in folders.items():
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# upstream\n")
        heads[repo_id] = local_hub.commit_folder(repo_id, folder, message="upload")
    return heads


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    path = tmp_path / "recipe.yml"
    path.write_text(RECIPE)
    return load_recipe(path)


def move(local_hub: LocalHub, tmp_path: Path, repo_id: str, seed: int) -> str:
    weights = fine_tune(random_weights(CONFIG, 3), seed=seed, noise=0.02)
    folder = write_model(tmp_path / f"moved-{seed}" / repo_id, weights, CONFIG)
    return local_hub.commit_folder(repo_id, folder, message=f"retrain {seed}")


def published_lock(local_hub: LocalHub, revision: str = "main") -> Lock:
    return Lock.from_json(local_hub.read_file(TARGET, LOCK_FILENAME, revision).decode())


def open_prs(local_hub: LocalHub) -> list[dict[str, object]]:
    return [pr for pr in local_hub.pull_requests(TARGET) if pr["status"] == "open"]


def test_first_run_releases_to_main_with_lock_and_card(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    report = run(recipe, token=BOT_TOKEN)

    assert report.ok and report.status == "released", report.summary()
    assert [s.name for s in report.steps] == [
        "check",
        "download",
        "merge",
        "scores",
        "card",
        "publish",
    ]
    assert report.revision == local_hub.head(TARGET)
    assert report.commit_url and report.revision in report.commit_url
    lock = published_lock(local_hub)
    assert {u.key: u.revision for u in lock.upstreams} == family
    files = local_hub.files(TARGET)
    assert {"model.safetensors", "config.json", "README.md", LOCK_FILENAME} <= set(files)
    assert "org/merged" in files["README.md"].decode()
    assert not open_prs(local_hub), "a first release has nothing to be reviewed against"


def test_nothing_moved_is_up_to_date_without_downloads(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    run(recipe, token=BOT_TOKEN)
    commits = len(local_hub.list_commits(TARGET))
    requests_before = len(local_hub.requests)

    report = run(recipe, token=BOT_TOKEN)

    assert report.status == "up-to-date" and not report.changed
    assert [s.name for s in report.steps] == ["check"]
    assert all(not u.moved for u in report.upstreams)
    assert len(local_hub.list_commits(TARGET)) == commits
    downloads = [r for r in local_hub.requests[requests_before:] if "/resolve/" in r.path]
    assert [r.path for r in downloads if r.path.endswith(".safetensors")] == []


def test_moves_open_one_pr_then_update_it(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    run(recipe, token=BOT_TOKEN)
    first = move(local_hub, tmp_path, "org/a", seed=11)

    opened = run(recipe, token=BOT_TOKEN)
    assert opened.status == "pr-opened", opened.summary()
    assert [u.key for u in opened.moved] == ["org/a"]
    assert opened.pr_url and opened.pr_url.endswith("/discussions/1")
    (pr,) = open_prs(local_hub)
    assert published_lock(local_hub, str(pr["ref"])).upstream("org/a").revision == first

    second = move(local_hub, tmp_path, "org/b", seed=12)
    updated = run(recipe, token=BOT_TOKEN)

    assert updated.status == "pr-updated", updated.summary()
    assert [u.key for u in updated.moved] == ["org/b"], "compared with the open PR's lock"
    (pr,) = open_prs(local_hub)
    pr_lock = published_lock(local_hub, str(pr["ref"]))
    assert (pr_lock.upstream("org/a").revision, pr_lock.upstream("org/b").revision) == (
        first,
        second,
    )
    assert published_lock(local_hub).upstream("org/a").revision == family["org/a"], "main kept"
    assert run(recipe, token=BOT_TOKEN).status == "up-to-date"


def test_no_create_pr_commits_a_move_to_main(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    run(recipe, token=BOT_TOKEN)
    moved = move(local_hub, tmp_path, "org/b", seed=21)

    report = run(recipe, token=BOT_TOKEN, create_pr=False)

    assert report.status == "released"
    assert published_lock(local_hub).upstream("org/b").revision == moved
    assert not open_prs(local_hub)


def test_force_with_nothing_moved_publishes_nothing(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    run(recipe, token=BOT_TOKEN)
    commits = len(local_hub.list_commits(TARGET))

    report = run(recipe, token=BOT_TOKEN, force=True)

    assert report.forced and report.status == "no-change", report.summary()
    assert "merge" in [s.name for s in report.steps], "forced runs rebuild"
    assert len(local_hub.list_commits(TARGET)) == commits


def test_recipe_change_rebuilds_although_no_upstream_moved(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    run(recipe, token=BOT_TOKEN)
    assert recipe.path is not None
    recipe.path.write_text(RECIPE.replace("weight: 0.6", "weight: 0.7"))

    report = run(load_recipe(recipe.path), token=BOT_TOKEN, create_pr=False)

    assert report.status == "released", report.summary()
    assert not report.moved
    assert published_lock(local_hub).recipe_sha256 == load_recipe(recipe.path).sha256


def test_dry_run_builds_and_describes_the_commit_without_publishing(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    run(recipe, token=BOT_TOKEN)
    move(local_hub, tmp_path, "org/a", seed=31)
    commits = len(local_hub.list_commits(TARGET))
    out = tmp_path / "dry"

    report = run(recipe, token=BOT_TOKEN, dry_run=True, out_dir=out)

    assert report.status == "dry-run" and report.ok and not report.changed
    assert report.commit_message and "org/a" in report.commit_message
    assert report.files["model.safetensors"] == (out / "model.safetensors").stat().st_size
    assert Lock.read(out / LOCK_FILENAME).upstream("org/a").revision == local_hub.head("org/a")
    assert len(local_hub.list_commits(TARGET)) == commits
    assert not open_prs(local_hub)


def test_deleted_upstream_fails_at_check_and_touches_nothing(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    run(recipe, token=BOT_TOKEN)
    head = local_hub.head(TARGET)
    local_hub.delete_repo("org/b")

    report = run(recipe, token=BOT_TOKEN)

    assert not report.ok and report.failed_step == "check"
    assert report.error and "org/b" in report.error
    assert report.hint
    assert local_hub.head(TARGET) == head and not open_prs(local_hub)


def test_broken_upstream_fails_at_merge_and_touches_nothing(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    run(recipe, token=BOT_TOKEN)
    head = local_hub.head(TARGET)
    wider = CONFIG.with_(intermediate_size=CONFIG.intermediate_size * 2)
    folder = write_model(tmp_path / "wider" / "org/a", random_weights(wider, 5), wider)
    local_hub.commit_folder("org/a", folder, message="a different architecture")

    report = run(recipe, token=BOT_TOKEN)

    assert report.status == "failed" and report.failed_step == "merge", report.summary()
    assert report.error and "mlp" in report.error
    assert local_hub.head(TARGET) == head and not open_prs(local_hub)
    assert "failed at merge" in report.summary()


def test_dry_run_summary_shows_the_commit_it_would_make(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    report = run(recipe, token=BOT_TOKEN, dry_run=True, out_dir=tmp_path / "dry")

    text = report.summary()
    assert "org/base: new (none -> " in text
    assert f"would commit to {TARGET}: {report.commit_message}" in text
    size = (tmp_path / "dry" / "model.safetensors").stat().st_size
    assert f"    model.safetensors  {size / 1000:.1f} kB" in text
    assert f"files left in: {tmp_path / 'dry'}" in text
    with pytest.raises(LocalHubError):
        local_hub.head(TARGET)  # a dry run does not even create the target repo


def test_dry_run_without_out_keeps_the_built_folder(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    report = run(recipe, token=BOT_TOKEN, dry_run=True)

    assert report.out_dir is not None
    out = Path(report.out_dir)
    assert (out / "model.safetensors").is_file() and (out / LOCK_FILENAME).is_file()
    assert set(report.files) == {p.name for p in out.iterdir()}


def test_a_published_run_without_out_names_no_vanished_folder(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe
) -> None:
    report = run(recipe, token=BOT_TOKEN)

    assert report.status == "released" and report.out_dir is None
    assert "built in" not in report.summary()


def test_the_scores_command_evaluates_the_built_model_into_the_card(
    local_hub: LocalHub, family: dict[str, str], tmp_path: Path
) -> None:
    """The orchestrator hands the merged folder to a real evaluation (perplexity with
    transformers) and its numbers reach the report and the card, nothing beside --out."""
    import json
    import shutil
    import sys

    data = Path(__file__).parent / "data" / "scores"
    (tmp_path / "eval").mkdir()
    for name in ("perplexity.py", "eval_text.txt"):
        shutil.copy(data / name, tmp_path / "eval" / name)
    command = f"{sys.executable} eval/perplexity.py {{model_dir}} {{results_dir}}"
    path = tmp_path / "recipe.yml"
    path.write_text(RECIPE + f"scores:\n  command: {json.dumps(command)}\n")
    out = tmp_path / "built" / "model"

    report = run(load_recipe(path), token=BOT_TOKEN, dry_run=True, out_dir=out)

    assert report.ok, report.summary()
    assert list(report.scores["tiny_text (word_perplexity)"]) == ["org/merged"]
    value = report.scores["tiny_text (word_perplexity)"]["org/merged"]
    assert 0.5 * CONFIG.vocab_size < value < 1.5 * CONFIG.vocab_size, "near-uniform odds"
    assert "tiny_text" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]


def test_run_never_builds_into_a_folder_that_holds_files(
    local_hub: LocalHub, family: dict[str, str], recipe: Recipe, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    report = run(recipe, token=BOT_TOKEN, out_dir=out)

    assert report.status == "failed" and report.failed_step == "check"
    assert report.error and "already exists and is not empty" in report.error
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(LocalHubError):
        local_hub.head(TARGET)
