"""Everything pearl-bot says to GitHub Actions, and the Action's entry point.

All workflow-command output goes through github-action-utils, from this module only: the token
mask (before anything prints), one `::group::` per pipeline step, the step outputs, the job
summary, and failures as an `::error::` annotation plus an explanation with the fix. Outside
GitHub Actions (`GITHUB_ACTIONS` unset) nothing here emits a workflow command.

`python -m pearl_bot.actions` (console script `pearl-bot-action`) is what `action.yml` runs. A
composite action exports no `INPUT_*` variables itself, so `action.yml` maps each input to
`INPUT_<NAME>` (upper case, `-` as `_`) through `env:`, never into the shell script.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import github_action_utils as gha

from pearl_bot.errors import PearlBotError
from pearl_bot.recipe import Recipe, load_recipe
from pearl_bot.report import RunReport, UpstreamMove

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DISPATCH_TYPE = "upstream-updated"

#: Each Action input and its `pearl-bot run` equivalent: a flag, the positional RECIPE, the
#: environment variable the Hub client reads, or the directory the command runs in.
ACTION_INPUTS: dict[str, str] = {
    "recipe": "RECIPE",
    "hf-token": "HF_TOKEN",
    "force": "--force",
    "create-pr": "--create-pr",
    "dry-run": "--dry-run",
    "working-directory": "cwd",
}

#: What to do next when a step failed and its error carried no hint of its own.
STEP_ADVICE: dict[str, str] = {
    "inputs": "fix the input named above in the `with:` block of the workflow step",
    "recipe": "fix the recipe field named above; `pearl-bot check RECIPE` validates it locally",
    "upstream": (
        "check that the upstream repo and revision exist on the Hub and that `hf-token` "
        "can read it (gated and private models need an approved token)"
    ),
    "merge": "run `pearl-bot merge RECIPE --out DIR -vv` locally to see the failing tensor",
    "card": "run `pearl-bot card RECIPE` locally to see the template error",
    "publish": (
        "check that `hf-token` is a write token for the target repo; nothing was published, "
        "so rerunning the workflow is safe"
    ),
}
BUG_ADVICE = (
    "this is a bug in pearl-bot: rerun with debug logging (re-run jobs > enable debug logging) "
    "and report it with the log"
)


class RunFn(Protocol):
    """The signature of `pearl_bot.run.run`, injectable for tests."""

    def __call__(
        self,
        recipe: Recipe,
        *,
        force: bool,
        create_pr: bool | None,
        dry_run: bool,
        out_dir: Path | None,
        token: str | None = None,
    ) -> RunReport: ...


@dataclass(frozen=True)
class Trigger:
    """The event that started the workflow, as far as a run cares."""

    event_name: str
    #: workflow_dispatch inputs, as the event payload holds them (strings "true"/"false").
    inputs: dict[str, Any] = field(default_factory=dict)
    #: The upstream repo id a repository_dispatch named, and the revision it announced.
    upstream: str | None = None
    upstream_revision: str | None = None

    def describe(self) -> str:
        """One line for the summary: what triggered this run."""
        if self.event_name != "repository_dispatch" or not self.upstream:
            return f"`{self.event_name or 'manual'}`"
        at = f" at `{self.upstream_revision[:12]}`" if self.upstream_revision else ""
        return f"`repository_dispatch`: upstream `{self.upstream}` updated{at}"


@dataclass(frozen=True)
class Settings:
    """The Action inputs, parsed: what to pass to `run()`."""

    recipe: str
    token: str | None
    force: bool
    create_pr: bool | None
    dry_run: bool
    working_directory: Path


# --------------------------------------------------------------------------------------------
# Workflow commands
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Fold one pipeline step into a `::group::` under GitHub Actions; nothing elsewhere."""
    if not gha.is_github_action():
        yield
        return
    with gha.group(name):
        yield


def mask_secret(value: str | None) -> None:
    """Tell the runner to hide `value` from the log; call it before anything prints.

    Outside GitHub Actions the mask command would print the secret itself, so nothing is emitted.
    """
    if value and gha.is_github_action():
        gha.add_mask(value)


def annotate_error(message: str, *, title: str) -> None:
    """An `::error::` annotation under GitHub Actions, a plain line on stderr elsewhere."""
    if gha.is_github_action():
        gha.error(message, title=title)
    else:
        print(f"error: {title}: {message}", file=sys.stderr)


def annotate_warning(message: str, *, title: str) -> None:
    """A `::warning::` annotation under GitHub Actions, a log warning elsewhere."""
    if gha.is_github_action():
        gha.warning(message, title=title)
    else:
        logger.warning("%s: %s", title, message)


def write_outputs(report: RunReport) -> None:
    """Set the step outputs `changed`, `status`, `revision`, `commit-url`, `pr-url`."""
    if not gha.vars.github.output:
        logger.debug("GITHUB_OUTPUT is not set; no step outputs written")
        return
    gha.set_output("changed", "true" if report.changed else "false")
    gha.set_output("status", report.status)
    gha.set_output("revision", report.revision or "")
    gha.set_output("commit-url", report.commit_url or "")
    gha.set_output("pr-url", report.pr_url or "")


def write_summary(markdown: str) -> None:
    """Append `markdown` to the job summary, when the runner gave us one."""
    if gha.vars.github.step_summary:
        gha.append_job_summary(markdown)
    else:
        logger.debug("GITHUB_STEP_SUMMARY is not set; no job summary written")


# --------------------------------------------------------------------------------------------
# Inputs and the triggering event
# --------------------------------------------------------------------------------------------


def input_env(name: str) -> str:
    """The environment variable `action.yml` maps input `name` to (`hf-token` -> INPUT_HF_TOKEN)."""
    return "INPUT_" + name.upper().replace("-", "_")


def _raw_input(name: str) -> str:
    return os.environ.get(input_env(name), "").strip()


def read_token() -> str | None:
    """The `hf-token` input, else `HF_TOKEN` from the job environment; None when neither is set."""
    return _raw_input("hf-token") or os.environ.get("HF_TOKEN", "").strip() or None


def read_trigger() -> Trigger:
    """Read GITHUB_EVENT_NAME and the event payload at GITHUB_EVENT_PATH."""
    event_name = gha.vars.github.event_name or ""
    payload = _read_payload()
    if event_name == "workflow_dispatch":
        return Trigger(event_name, inputs=dict(payload.get("inputs") or {}))
    if event_name == "repository_dispatch":
        return _dispatch_trigger(payload)
    return Trigger(event_name)


def _read_payload() -> dict[str, Any]:
    path = gha.vars.github.event_path
    if not path:
        return {}
    gha.event_payload.cache_clear()  # a long-lived process (or a test) may see several events
    try:
        payload = gha.event_payload()
    except (OSError, ValueError) as err:
        raise _input_error(
            f"cannot read the event payload at GITHUB_EVENT_PATH '{path}' ({err})",
            "run pearl-bot inside a GitHub Actions job, or unset GITHUB_EVENT_PATH",
        ) from err
    return payload if isinstance(payload, dict) else {}


def _dispatch_trigger(payload: dict[str, Any]) -> Trigger:
    event_type = str(payload.get("action") or "")
    if event_type != DISPATCH_TYPE:
        annotate_warning(
            f"repository_dispatch type '{event_type}' is not '{DISPATCH_TYPE}'; "
            "checking every upstream anyway",
            title="pearl-bot: unexpected dispatch",
        )
    client = payload.get("client_payload") or {}
    upstream = client.get("repo_id") or client.get("repo") or client.get("upstream")
    revision = client.get("revision") or client.get("sha") or client.get("newSha")
    return Trigger(
        "repository_dispatch",
        upstream=str(upstream) if upstream else None,
        upstream_revision=str(revision) if revision else None,
    )


def read_settings(trigger: Trigger, token: str | None) -> Settings:
    """Parse the Action inputs; an empty input falls back to the workflow_dispatch payload."""
    recipe = _raw_input("recipe") or str(trigger.inputs.get("recipe") or "").strip()
    if not recipe:
        raise _input_error(
            "input `recipe` is empty", "set `with: recipe: path/to/recipe.yml` in the workflow"
        )
    return Settings(
        recipe=recipe,
        token=token,
        force=_bool_input("force", trigger) or False,
        create_pr=_bool_input("create-pr", trigger),
        dry_run=_bool_input("dry-run", trigger) or False,
        working_directory=Path(_raw_input("working-directory") or "."),
    )


def _bool_input(name: str, trigger: Trigger) -> bool | None:
    """The input, else the dispatch payload's input of the same name, else None (the default)."""
    value: Any = _raw_input(name)
    if value == "":
        value = trigger.inputs.get(name, "")
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text == "":
        return None
    raise _input_error(f"input `{name}` is '{text}', not a boolean", "use `true` or `false`")


def _input_error(message: str, hint: str) -> PearlBotError:
    err = PearlBotError(message, hint=hint)
    err.step = "inputs"
    return err


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, run_fn: RunFn | None = None) -> int:
    """Run pearl-bot as a GitHub Action: inputs from INPUT_*, outputs and summary to the runner.

    Returns 0 when the run succeeded (whether or not anything moved), 1 when it failed.
    """
    _parse_args(argv)
    token = read_token()
    mask_secret(token)  # before anything else can print
    _configure_logging()
    trigger = Trigger("")
    settings: Settings | None = None
    try:
        trigger = read_trigger()
        settings = read_settings(trigger, token)
        report = _run(settings, run_fn or _default_run_fn())
    except PearlBotError as err:
        report = _failed_report(settings, err.step, err.message, err.hint)
    except Exception as err:  # the edge: a bug still gets its annotation and summary
        traceback.print_exc()
        report = _failed_report(settings, "pearl-bot", f"{type(err).__name__}: {err}", BUG_ADVICE)
    publish_report(report, trigger, token)
    return 0 if report.ok else 1


def _parse_args(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="pearl-bot-action",
        description=(
            "The pearl-bot GitHub Action. Reads its inputs from INPUT_RECIPE, INPUT_HF_TOKEN, "
            "INPUT_FORCE, INPUT_CREATE_PR, INPUT_DRY_RUN and INPUT_WORKING_DIRECTORY, and the "
            "event from GITHUB_EVENT_NAME / GITHUB_EVENT_PATH."
        ),
    )
    parser.parse_args(argv)


def _configure_logging() -> None:
    from pearl_bot.cli import configure_logging

    configure_logging(2 if gha.vars.runner.debug else 1)


def _default_run_fn() -> RunFn:
    from pearl_bot.run import run  # imported late: it pulls in torch and the Hub client

    return run


def _run(settings: Settings, run_fn: RunFn) -> RunReport:
    folder = settings.working_directory
    if not folder.is_dir():
        raise _input_error(
            f"input `working-directory` is '{folder}', which is not a folder",
            "give a folder of the checked-out repository, relative to $GITHUB_WORKSPACE",
        )
    with contextlib.chdir(folder):
        recipe = load_recipe(settings.recipe)
        return run_fn(
            recipe,
            force=settings.force,
            create_pr=settings.create_pr,
            dry_run=settings.dry_run,
            out_dir=None,
            token=settings.token,
        )


def _failed_report(
    settings: Settings | None, step_name: str, message: str, hint: str | None
) -> RunReport:
    recipe = settings.recipe if settings else _raw_input("recipe") or "(no recipe)"
    return RunReport(
        recipe=recipe,
        repo_id=None,
        status="failed",
        failed_step=step_name,
        error=message,
        hint=hint,
    )


def publish_report(report: RunReport, trigger: Trigger, token: str | None = None) -> None:
    """Hand a finished run to GitHub: log lines, outputs, annotations and the job summary."""
    print(_redact(report.summary(), token))
    write_outputs(report)
    if not report.ok:
        annotate_error(
            _redact(report.error or "unknown error", token),
            title=f"pearl-bot: {report.failed_step or 'run'} failed",
        )
    _warn_unknown_upstream(report, trigger)
    write_summary(_redact(render_summary(report, trigger), token))


def _warn_unknown_upstream(report: RunReport, trigger: Trigger) -> None:
    if not trigger.upstream or not report.upstreams:
        return
    known = {u.repo_id for u in report.upstreams} | {u.key for u in report.upstreams}
    if trigger.upstream not in known:
        annotate_warning(
            f"the dispatch named upstream '{trigger.upstream}', which recipe "
            f"'{report.recipe}' does not use; checked its own upstreams instead",
            title="pearl-bot: unknown upstream",
        )


def _redact(text: str, token: str | None) -> str:
    """Files (outputs, summary) are not masked by the runner, so the token is cut out here."""
    return text.replace(token, "***") if token else text


# --------------------------------------------------------------------------------------------
# The job summary
# --------------------------------------------------------------------------------------------

_HEADLINES: dict[str, str] = {
    "up-to-date": "✅ Up to date: no upstream moved since the last release",
    "released": "🚀 Released a new revision",
    "pr-opened": "📬 Opened a Hub pull request with the new revision",
    "pr-updated": "📬 Updated the open Hub pull request with the new revision",
    "no-change": "✅ Rebuilt: the result equals the published release, nothing to publish",
    "dry-run": "🧪 Dry run: built everything, published nothing",
    "failed": "❌ Failed",
}


def render_summary(report: RunReport, trigger: Trigger) -> str:
    """The job summary of one run, in GitHub-flavoured Markdown."""
    sections: list[Callable[[RunReport], str]] = [
        _upstreams_section,
        _release_section,
        _files_section,
        _scores_section,
        _timings_section,
        _failure_section,
    ]
    parts = [_header(report, trigger)] + [section(report) for section in sections]
    return "\n\n".join(part for part in parts if part) + "\n"


def _header(report: RunReport, trigger: Trigger) -> str:
    target = f" → `{report.repo_id}`" if report.repo_id else ""
    headline = _HEADLINES.get(report.status, report.status)
    if report.status == "failed" and report.failed_step:
        headline += f" at step `{report.failed_step}`"
    flags = [name for name, on in (("forced", report.forced), ("dry run", report.dry_run)) if on]
    extra = f" ({', '.join(flags)})" if flags else ""
    return (
        f"## pearl-bot: `{report.recipe}`{target}\n\n"
        f"**{headline}**{extra}\n\nTriggered by {trigger.describe()}."
    )


def _upstreams_section(report: RunReport) -> str:
    if not report.upstreams:
        return ""
    rows = ["| upstream | tracks | locked | current | |", "|---|---|---|---|---|"]
    for up in report.upstreams:
        rows.append(
            f"| {_cell(up.key)} | {_cell(up.tracked or '')} | {_commit_link(up, up.locked)} "
            f"| {_commit_link(up, up.current)} | {'**moved**' if up.moved else 'unchanged'} |"
        )
    moved = len(report.moved)
    return f"### Upstreams ({moved} moved)\n\n" + "\n".join(rows)


def _commit_link(up: UpstreamMove, revision: str | None) -> str:
    if not revision:
        return "none"
    short = f"`{revision[:12]}`"
    if not up.repo_id or revision.startswith("sha256:"):
        return short
    return f"[{short}]({hub_url(f'{up.repo_id}/commit/{revision}')})"


def hub_url(path: str) -> str:
    """A link on the Hub this run talks to (`HF_ENDPOINT`, else huggingface.co)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT
    return f"{endpoint}/{path}"


def _release_section(report: RunReport) -> str:
    lines = []
    if report.revision:
        lines.append(f"- Revision: `{report.revision}`")
    if report.commit_url:
        lines.append(f"- Commit: {report.commit_url}")
    if report.pr_url:
        lines.append(f"- Pull request: {report.pr_url} (review and merge it on the Hub)")
    if report.out_dir:
        lines.append(f"- Output folder: `{report.out_dir}`")
    return "### Release\n\n" + "\n".join(lines) if lines else ""


def _files_section(report: RunReport) -> str:
    if not report.files:
        return ""
    verb = "would commit" if report.dry_run else "committed"
    rows = ["| file | size |", "|---|---:|"]
    rows += [f"| {_cell(path)} | {_size(size)} |" for path, size in sorted(report.files.items())]
    total = _size(sum(report.files.values()))
    text = f"<details><summary>Files {verb}: {len(report.files)}, {total}</summary>\n\n"
    text += "\n".join(rows)
    if report.commit_message:
        text += "\n\nCommit message:\n\n```text\n" + report.commit_message.strip() + "\n```"
    return text + "\n\n</details>"


def _scores_section(report: RunReport) -> str:
    if not report.scores:
        return ""
    models: list[str] = []
    for row in report.scores.values():
        models += [name for name in row if name not in models]
    rows = [
        "| benchmark | " + " | ".join(_cell(m) for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for benchmark, row in report.scores.items():
        values = [f"{row[m]:.4g}" if m in row else "–" for m in models]
        rows.append(f"| {_cell(benchmark)} | " + " | ".join(values) + " |")
    return "### Scores\n\n" + "\n".join(rows)


def _timings_section(report: RunReport) -> str:
    if not report.steps:
        return ""
    rows = ["| step | seconds |", "|---|---:|"]
    rows += [f"| {_cell(s.name)} | {s.seconds:.1f} |" for s in report.steps]
    rows.append(f"| **total** | **{sum(s.seconds for s in report.steps):.1f}** |")
    return "### Timings\n\n" + "\n".join(rows)


def _failure_section(report: RunReport) -> str:
    if report.ok:
        return ""
    step_name = report.failed_step or "run"
    fix = report.hint or STEP_ADVICE.get(step_name, BUG_ADVICE)
    return (
        f"### What failed\n\nStep `{step_name}`: {report.error or 'unknown error'}\n\n"
        f"### How to fix it\n\n{fix}\n\n"
        "The published repo was left untouched."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


if __name__ == "__main__":
    raise SystemExit(main())
