"""The nightly loop: check, and when an upstream moved, download, merge, score, card, publish.

`run()` reads as one call per step. Each step is timed into the `RunReport` and, under GitHub
Actions, wrapped in a `::group::`. A failing step stops the run, leaves the published repo as it
was, and is reported with the step's name, the error and its fix.

Release policy: the first release of a target (no lock on its `main` yet) is committed to
`main`, since there is nothing to review it against; later releases follow `publish.create_pr`
(a Hub pull request, one open at a time, updated in place when an upstream moves again).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pearl_bot import actions
from pearl_bot.errors import PearlBotError
from pearl_bot.lock import (
    LOCK_FILENAME,
    Lock,
    LockedUpstream,
    PublishedState,
    build_lock,
    compare_upstreams,
    read_published_lock,
    upstream_changed,
    write_lock,
)
from pearl_bot.recipe import Recipe
from pearl_bot.report import RunReport, Status, StepTiming

logger = logging.getLogger(__name__)


def run(
    recipe: Recipe,
    *,
    force: bool = False,
    create_pr: bool | None = None,
    dry_run: bool = False,
    out_dir: Path | None = None,
    token: str | None = None,
) -> RunReport:
    """Run the loop once for `recipe` and return what happened (never raises PearlBotError)."""
    repo_id = recipe.publish.repo_id if recipe.publish else None
    report = RunReport(
        recipe=str(recipe.path.name if recipe.path else "recipe"),
        repo_id=repo_id,
        forced=force,
        dry_run=dry_run,
    )
    work = Path(tempfile.mkdtemp(prefix="pearl-bot-run-"))
    try:
        _run_steps(recipe, report, work, force, create_pr, dry_run, out_dir, token)
    except PearlBotError as err:
        _fail(report, err.message, err.hint)
    except OSError as err:
        # A network, disk or offline-mode failure that no step turned into a PearlBotError.
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        _fail(report, message, "nothing was published; check the network and disk, then rerun")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _fail(report: RunReport, message: str, hint: str | None) -> None:
    report.status = "failed"
    report.error = message
    report.hint = hint
    logger.info("%s failed: %s", report.failed_step, message)


def _run_steps(
    recipe: Recipe,
    report: RunReport,
    work: Path,
    force: bool,
    create_pr: bool | None,
    dry_run: bool,
    out_dir: Path | None,
    token: str | None,
) -> None:
    from pearl_bot.merge.writer import check_out_dir
    from pearl_bot.upstream import resolve_revisions

    with _step(report, "check"):
        if out_dir is not None:
            # Never build into (or wipe) a folder that already holds something.
            check_out_dir(Path(out_dir))
        upstreams = resolve_revisions(recipe, token=token)
        published = _published_state(recipe, token)
        latest = published.latest_lock if published is not None else None
        latest_source = published.lock_source if published is not None else None
        report.upstreams = compare_upstreams(latest, upstreams)
    if not force and not upstream_changed(recipe, latest, upstreams):
        report.status = "up-to-date"
        logger.info("up to date: nothing moved since the lock of %s", latest_source)
        return

    build_dir = _build_dir(out_dir, work, dry_run)
    previous = published.lock if published is not None else None
    lock = _merge(recipe, report, build_dir, upstreams, token)
    if out_dir is not None or dry_run:  # otherwise it is a temporary folder, gone after the run
        report.out_dir = str(build_dir)
    if _same_build(lock, latest):
        report.status = "no-change"
        logger.info("the rebuilt files are identical to %s: nothing to publish", latest_source)
        return
    final = _finish(recipe, report, build_dir, work, lock, previous, token)
    _publish(recipe, report, build_dir, final, published, create_pr, dry_run, token)


def _build_dir(out_dir: Path | None, work: Path, dry_run: bool) -> Path:
    """Where the model is built: `out_dir`, else a temporary folder that a dry run keeps."""
    if out_dir is not None:
        return Path(out_dir)
    if dry_run:
        return Path(tempfile.mkdtemp(prefix="pearl-bot-dry-run-")) / "model"
    return work / "model"


def _published_state(recipe: Recipe, token: str | None) -> PublishedState | None:
    if recipe.publish is None:
        return None
    return read_published_lock(
        recipe.publish.repo_id, token=token, revision=recipe.publish.revision
    )


def _merge(
    recipe: Recipe,
    report: RunReport,
    build_dir: Path,
    upstreams: list[LockedUpstream],
    token: str | None,
) -> Lock:
    """Download and merge; returns the lock of the merged files (card not written yet)."""
    from pearl_bot.download import fetch_models
    from pearl_bot.merge import merge_recipe

    with _step(report, "download"):
        fetched = fetch_models(recipe, upstreams=upstreams, token=token)
    with _step(report, "merge"):
        result = merge_recipe(recipe, build_dir, model_dirs=fetched)
    return build_lock(recipe, fetched.upstreams, numerics=result.numerics, out_dir=build_dir)


def _same_build(lock: Lock, latest: Lock | None) -> bool:
    """Whether a rebuild reproduced the latest release: same inputs and the same merged files.

    The card and the lock are left out: the card of a rebuild says "nothing moved" where the
    release said what did, and that alone is no reason to publish.
    """
    if latest is None:
        return False
    derived = {"README.md", LOCK_FILENAME}
    published = {k: v for k, v in latest.outputs.items() if k not in derived}
    return (
        lock.release_key() | {"outputs": None} == latest.release_key() | {"outputs": None}
        and lock.outputs == published
    )


def _finish(
    recipe: Recipe,
    report: RunReport,
    build_dir: Path,
    work: Path,
    lock: Lock,
    previous: Lock | None,
    token: str | None,
) -> Lock:
    """Scores, then the card, then the final lock (whose outputs cover the card).

    An evaluation command writes its results under the run's temporary `work` folder, never
    beside the model the user asked for.
    """
    from pearl_bot.card import render_card
    from pearl_bot.scores import collect_scores
    from pearl_bot.upstream_cards import fetch_upstream_cards

    with _step(report, "scores"):
        cards = fetch_upstream_cards(lock, token=token)
        scores = collect_scores(recipe, model_dir=build_dir, upstream_cards=cards, work_dir=work)
        report.scores = scores.table()
    with _step(report, "card"):
        text = render_card(
            recipe,
            lock=lock,
            previous=previous,
            scores=scores,
            repo_id=report.repo_id,
            upstream_cards=cards,
        )
        (build_dir / "README.md").write_text(text, encoding="utf-8")
        final = build_lock(recipe, lock.upstreams, numerics=lock.numerics, out_dir=build_dir)
        write_lock(final, build_dir)
    return final


def _publish(
    recipe: Recipe,
    report: RunReport,
    build_dir: Path,
    lock: Lock,
    published: PublishedState | None,
    create_pr: bool | None,
    dry_run: bool,
    token: str | None,
) -> None:
    from pearl_bot.publish import commit_text, push_revision

    report.files = {
        p.relative_to(build_dir).as_posix(): p.stat().st_size
        for p in sorted(build_dir.rglob("*"))
        if p.is_file()
    }
    if recipe.publish is None or published is None:
        report.status = "dry-run"
        logger.info("the recipe has no `publish:` section; the model is in %s", build_dir)
        return
    if dry_run:
        report.commit_message, _ = commit_text(lock, published.lock)
        report.status = "dry-run"
        return
    wants_pr = recipe.publish.create_pr if create_pr is None else create_pr
    with _step(report, "publish"):
        result = push_revision(
            build_dir,
            recipe.publish.repo_id,
            lock=lock,
            previous=published,
            # A first release has nothing to be reviewed against: it goes to the branch.
            create_pr=wants_pr and published.lock is not None,
            private=recipe.publish.private,
            revision=recipe.publish.revision,
            tag=recipe.publish.tag,
            token=token,
        )
    report.commit_message = result.commit_message
    report.revision = result.revision
    report.commit_url = result.commit_url
    report.pr_url = result.pr_url
    report.status = _STATUS[result.status]


_STATUS: dict[str, Status] = {
    "committed": "released",
    "pr-opened": "pr-opened",
    "pr-updated": "pr-updated",
    "no-change": "no-change",
}


@contextmanager
def _step(report: RunReport, name: str) -> Iterator[None]:
    """Time a step into the report, group its output on GitHub, and name it if it fails."""
    started = time.monotonic()
    report.failed_step = name
    with actions.step(name):
        yield
    report.failed_step = None
    report.steps.append(StepTiming(name, round(time.monotonic() - started, 3)))
    logger.info("step %s done in %.1fs", name, report.steps[-1].seconds)
