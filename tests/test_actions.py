"""The Action's entry point in a simulated GitHub Actions job, and lint checks of the YAML files.

`main()` runs in-process with GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_EVENT_NAME and
GITHUB_EVENT_PATH pointing at temp files, and a fake `run()` that records how it was called and
returns a prepared report.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import github_action_utils as gha
import pytest
import yaml

from pearl_bot import actions
from pearl_bot.cli import build_parser
from pearl_bot.errors import PublishError
from pearl_bot.recipe import Recipe
from pearl_bot.report import RunReport, StepTiming, UpstreamMove
from pearl_bot.testing.models import (
    TinyConfig,
    build_family,
    fine_tune,
    random_weights,
    write_model,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pearl-7b-0210-ties.yml"
TOKEN = "hf_SeCrEtToKeN0123456789abcdef"
OLD = "a" * 40
NEW = "b" * 40
BASE = "c" * 40


# --------------------------------------------------------------------------------------------
# A simulated GitHub Actions job
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """Temp files of one simulated job step, and readers for what the step wrote."""

    root: Path
    monkeypatch: pytest.MonkeyPatch

    def event(self, name: str, payload: dict[str, Any]) -> None:
        path = self.root / "event.json"
        path.write_text(json.dumps(payload), encoding="utf-8")
        self.monkeypatch.setenv("GITHUB_EVENT_NAME", name)
        self.monkeypatch.setenv("GITHUB_EVENT_PATH", str(path))

    def inputs(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(actions.input_env(name.replace("_", "-")), value)

    def outputs(self) -> dict[str, str]:
        return parse_file_commands((self.root / "output").read_text(encoding="utf-8"))

    def summary(self) -> str:
        return (self.root / "summary.md").read_text(encoding="utf-8")


def parse_file_commands(text: str) -> dict[str, str]:
    """Parse `name<<DELIM` / value lines / `DELIM` records, as the runner does."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        name, _, delimiter = line.partition("<<")
        assert name and delimiter.startswith("ghadelimiter_"), f"not a heredoc record: {line!r}"
        body: list[str] = []
        for value_line in lines:
            if value_line == delimiter:
                break
            body.append(value_line)
        else:
            raise AssertionError(f"record {name!r} has no closing delimiter")
        values[name] = "\n".join(body)
    return values


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Job]:
    """A GitHub Actions step environment in a temp workspace holding the Pearl TIES recipe."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    shutil.copy(EXAMPLE, workspace / "recipe.yml")
    for name in ("output", "summary.md", "env", "state"):
        (tmp_path / name).touch()
    for key in list(os.environ):
        if key.startswith("INPUT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_ENV", str(tmp_path / "env"))
    monkeypatch.setenv("GITHUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("GITHUB_REPOSITORY", "pearl-bot/pearl-bot")
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(workspace))
    monkeypatch.delenv("RUNNER_DEBUG", raising=False)
    monkeypatch.chdir(workspace)
    level = logging.getLogger("pearl_bot").level
    gha.event_payload.cache_clear()
    current = Job(tmp_path, monkeypatch)
    current.event("schedule", {"schedule": "17 4 * * *"})
    current.inputs(recipe="recipe.yml")
    yield current
    gha.event_payload.cache_clear()
    logging.getLogger("pearl_bot").setLevel(level)


@dataclass
class FakeRun:
    """Stands in for `pearl_bot.run.run`: records its calls, returns or raises what it is given."""

    report: RunReport | None = None
    raises: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self,
        recipe: Recipe,
        *,
        force: bool,
        create_pr: bool | None,
        dry_run: bool,
        out_dir: Path | None,
        token: str | None = None,
    ) -> RunReport:
        self.calls.append(
            dict(
                recipe=recipe,
                force=force,
                create_pr=create_pr,
                dry_run=dry_run,
                out_dir=out_dir,
                token=token,
                cwd=Path.cwd(),
            )
        )
        if self.raises is not None:
            raise self.raises
        assert self.report is not None
        return self.report


def released_report() -> RunReport:
    return RunReport(
        recipe="recipe.yml",
        repo_id="louisbrulenaudet/Pearl-7B-0210-ties",
        status="released",
        upstreams=[
            UpstreamMove(
                "OpenPipe/mistral-ft-optimized-1227",
                "OpenPipe/mistral-ft-optimized-1227",
                "main",
                BASE,
                BASE,
            ),
            UpstreamMove(
                "WizardLM/WizardMath-7B-V1.1", "WizardLM/WizardMath-7B-V1.1", "main", OLD, NEW
            ),
        ],
        steps=[StepTiming("check", 0.4), StepTiming("merge", 12.25), StepTiming("publish", 3.0)],
        revision="d" * 40,
        commit_url="http://hub.test/louisbrulenaudet/Pearl-7B-0210-ties/commit/" + "d" * 40,
        scores={"arc_challenge": {"Pearl-7B-0210-ties": 0.6782, "Pearl-7B-slerp": 0.66}},
    )


def failed_report(error: str, hint: str | None = None) -> RunReport:
    return RunReport(
        recipe="recipe.yml",
        repo_id="louisbrulenaudet/Pearl-7B-0210-ties",
        status="failed",
        failed_step="publish",
        error=error,
        hint=hint,
    )


def stdout_lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


# --------------------------------------------------------------------------------------------
# step(): one ::group:: per pipeline step under Actions, nothing elsewhere
# --------------------------------------------------------------------------------------------


def test_step_is_a_group_under_github_actions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with actions.step("merge"):
        print("merging")
    assert capsys.readouterr().out.splitlines() == ["::group ::merge", "merging", "::endgroup::"]


def test_step_closes_its_group_when_the_step_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(PublishError), actions.step("publish"):
        raise PublishError("refused", repo_id="org/x")
    assert capsys.readouterr().out.splitlines()[-1] == "::endgroup::"


def test_step_prints_nothing_outside_github_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with actions.step("merge"):
        print("merging")
    assert capsys.readouterr().out == "merging\n"


# --------------------------------------------------------------------------------------------
# main(): outputs, summary, masking, events, failures
# --------------------------------------------------------------------------------------------


def test_scheduled_release_writes_outputs_and_summary(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun(released_report())
    job.inputs(hf_token=TOKEN)

    assert actions.main([], run_fn=fake) == 0

    (call,) = fake.calls
    assert call["recipe"].publish.repo_id == "louisbrulenaudet/Pearl-7B-0210-ties"
    assert (call["force"], call["create_pr"], call["dry_run"]) == (False, None, False)
    assert call["token"] == TOKEN
    assert job.outputs() == {
        "changed": "true",
        "status": "released",
        "revision": "d" * 40,
        "commit-url": "http://hub.test/louisbrulenaudet/Pearl-7B-0210-ties/commit/" + "d" * 40,
        "pr-url": "",
    }
    summary = job.summary()
    endpoint = os.environ["HF_ENDPOINT"]
    assert "## pearl-bot: `recipe.yml` → `louisbrulenaudet/Pearl-7B-0210-ties`" in summary
    assert "**🚀 Released a new revision**" in summary
    assert "Triggered by `schedule`." in summary
    assert "### Upstreams (1 moved)" in summary
    wizard_row = next(line for line in summary.splitlines() if "WizardMath" in line)
    assert f"[`{OLD[:12]}`]({endpoint}/WizardLM/WizardMath-7B-V1.1/commit/{OLD})" in wizard_row
    assert f"[`{NEW[:12]}`]({endpoint}/WizardLM/WizardMath-7B-V1.1/commit/{NEW})" in wizard_row
    assert wizard_row.endswith("| **moved** |")
    assert "| benchmark | Pearl-7B-0210-ties | Pearl-7B-slerp |" in summary
    assert "| arc_challenge | 0.6782 | 0.66 |" in summary
    assert f"- Commit: {fake.report.commit_url}" in summary  # type: ignore[union-attr]
    assert "| merge | 12.2 |" in summary and "| **total** | **15.7** |" in summary
    assert "What failed" not in summary
    lines, _ = stdout_lines(capsys)
    assert not any(line.startswith("::error") for line in lines)


def test_token_is_masked_first_and_never_written(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    # The worst case: an error message that quotes the token.
    fake = FakeRun(failed_report(f"401 for token {TOKEN}", hint="use a write token"))
    job.inputs(hf_token=TOKEN)

    assert actions.main([], run_fn=fake) == 1

    lines, err = stdout_lines(capsys)
    assert lines[0] == f"::add-mask ::{TOKEN}"
    assert not [line for line in lines[1:] if TOKEN in line]
    assert TOKEN not in err
    assert TOKEN not in job.summary() and "401 for token ***" in job.summary()
    assert TOKEN not in (job.root / "output").read_text(encoding="utf-8")


def test_token_from_the_job_environment_is_masked_too(
    job: Job, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 0

    assert fake.calls[0]["token"] == TOKEN
    assert stdout_lines(capsys)[0][0] == f"::add-mask ::{TOKEN}"


def test_outside_github_actions_the_token_is_not_printed_at_all(
    job: Job, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS")
    job.inputs(hf_token=TOKEN)

    assert actions.main([], run_fn=FakeRun(failed_report(f"bad {TOKEN}"))) == 1

    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert "::" not in captured.out  # no workflow commands outside Actions
    assert "error: pearl-bot: publish failed: bad ***" in captured.err


def test_workflow_dispatch_string_inputs_reach_run(job: Job) -> None:
    for key in ("INPUT_RECIPE", "INPUT_FORCE", "INPUT_DRY_RUN"):
        job.monkeypatch.delenv(key, raising=False)
    job.event(
        "workflow_dispatch",
        {
            "inputs": {
                "recipe": "recipe.yml",
                "force": "true",
                "create-pr": "false",
                "dry-run": "true",
            }
        },
    )
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 0

    (call,) = fake.calls
    assert (call["force"], call["create_pr"], call["dry_run"]) == (True, False, True)
    assert "Triggered by `workflow_dispatch`." in job.summary()


def test_explicit_action_inputs_win_over_the_dispatch_payload(job: Job) -> None:
    job.event("workflow_dispatch", {"inputs": {"force": "true", "create-pr": "true"}})
    job.inputs(force="false", create_pr="FALSE", dry_run="True")
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 0

    (call,) = fake.calls
    assert (call["force"], call["create_pr"], call["dry_run"]) == (False, False, True)


def test_repository_dispatch_names_the_upstream_in_the_summary(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    job.event(
        "repository_dispatch",
        {
            "action": "upstream-updated",
            "client_payload": {"repo": "WizardLM/WizardMath-7B-V1.1", "newSha": NEW},
        },
    )
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 0

    assert len(fake.calls) == 1
    assert (
        f"Triggered by `repository_dispatch`: upstream `WizardLM/WizardMath-7B-V1.1` updated "
        f"at `{NEW[:12]}`." in job.summary()
    )
    lines, _ = stdout_lines(capsys)
    assert not any(line.startswith("::warning") for line in lines)


def test_repository_dispatch_for_another_upstream_or_type_warns(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    job.event("repository_dispatch", {"action": "ping", "client_payload": {"repo": "org/other"}})

    assert actions.main([], run_fn=FakeRun(released_report())) == 0

    warnings = [line for line in stdout_lines(capsys)[0] if line.startswith("::warning")]
    assert len(warnings) == 2
    assert "type 'ping' is not 'upstream-updated'" in warnings[0]
    assert "upstream 'org/other', which recipe 'recipe.yml' does not use" in warnings[1]


def test_failed_run_annotates_explains_and_exits_1(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun(failed_report("403 Forbidden on louisbrulenaudet/Pearl-7B-0210-ties"))

    assert actions.main([], run_fn=fake) == 1

    lines, _ = stdout_lines(capsys)
    errors = [line for line in lines if line.startswith("::error")]
    assert errors == [
        "::error title=pearl-bot%3A publish failed::403 Forbidden on "
        "louisbrulenaudet/Pearl-7B-0210-ties"
    ]
    summary = job.summary()
    assert "**❌ Failed at step `publish`**" in summary
    assert "### What failed\n\nStep `publish`: 403 Forbidden" in summary
    assert "### How to fix it\n\n" + actions.STEP_ADVICE["publish"] in summary
    assert job.outputs()["changed"] == "false" and job.outputs()["status"] == "failed"


def test_error_raised_by_run_becomes_the_same_failure(job: Job) -> None:
    fake = FakeRun(
        raises=PublishError("a commit happened since", repo_id="org/x", hint="rerun the workflow")
    )

    assert actions.main([], run_fn=fake) == 1

    summary = job.summary()
    assert "Step `publish`: a commit happened since" in summary
    assert "### How to fix it\n\nrerun the workflow" in summary


def test_missing_recipe_fails_before_run_naming_the_file(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    job.inputs(recipe="recipes/nope.yml")
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 1

    assert fake.calls == []
    errors = [line for line in stdout_lines(capsys)[0] if line.startswith("::error")]
    assert errors == [
        "::error title=pearl-bot%3A recipe failed::recipes/nope.yml: recipe file not found"
    ]
    assert "### How to fix it\n\ncheck the path" in job.summary()


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"force": "yes"}, "input `force` is 'yes', not a boolean"),
        ({"recipe": "  "}, "input `recipe` is empty"),
        ({"working_directory": "missing"}, "input `working-directory` is 'missing'"),
    ],
)
def test_bad_inputs_fail_with_the_input_named(
    job: Job, capsys: pytest.CaptureFixture[str], inputs: dict[str, str], expected: str
) -> None:
    job.inputs(**inputs)
    fake = FakeRun(released_report())

    assert actions.main([], run_fn=fake) == 1

    assert fake.calls == []
    errors = [line for line in stdout_lines(capsys)[0] if line.startswith("::error")]
    assert len(errors) == 1 and errors[0].startswith("::error title=pearl-bot%3A inputs failed::")
    assert expected in errors[0]
    assert expected in job.summary()


def test_unexpected_exception_is_reported_as_a_bug_with_traceback(
    job: Job, capsys: pytest.CaptureFixture[str]
) -> None:
    assert actions.main([], run_fn=FakeRun(raises=RuntimeError("boom"))) == 1

    lines, err = stdout_lines(capsys)
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert "::error title=pearl-bot%3A pearl-bot failed::RuntimeError: boom" in lines
    assert actions.BUG_ADVICE in job.summary()


def test_working_directory_is_where_the_recipe_is_read_and_run_happens(job: Job) -> None:
    sub = Path.cwd() / "models"
    sub.mkdir()
    (Path.cwd() / "recipe.yml").rename(sub / "pearl.yml")
    job.inputs(recipe="pearl.yml", working_directory="models")
    fake = FakeRun(released_report())
    before = Path.cwd()

    assert actions.main([], run_fn=fake) == 0

    assert fake.calls[0]["cwd"] == sub
    assert Path.cwd() == before


def test_dry_run_summary_lists_the_commit_it_would_make(job: Job) -> None:
    report = RunReport(
        recipe="recipe.yml",
        repo_id="org/merged",
        status="dry-run",
        dry_run=True,
        files={"model.safetensors": 3 * 1024 * 1024, "README.md": 2048, "pearl.lock.json": 900},
        commit_message="Re-merge: WizardMath moved\n\nbody",
        out_dir="/tmp/out",
    )

    assert actions.main([], run_fn=FakeRun(report)) == 0

    summary = job.summary()
    assert "**🧪 Dry run: built everything, published nothing** (dry run)" in summary
    assert "Files would commit: 3, 3.0 MiB" in summary
    assert "| model.safetensors | 3.0 MiB |" in summary and "| pearl.lock.json | 900 B |" in summary
    assert "```text\nRe-merge: WizardMath moved\n\nbody\n```" in summary
    assert job.outputs()["changed"] == "false" and job.outputs()["revision"] == ""


def test_without_runner_files_main_still_succeeds(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_OUTPUT")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    monkeypatch.delenv("GITHUB_EVENT_PATH")

    assert actions.main([], run_fn=FakeRun(released_report())) == 0


def test_unreadable_event_payload_is_an_input_error(job: Job) -> None:
    (job.root / "event.json").write_text("{not json", encoding="utf-8")

    assert actions.main([], run_fn=FakeRun(released_report())) == 1

    assert "cannot read the event payload at GITHUB_EVENT_PATH" in job.summary()


def test_module_entry_point_runs_as_action_yml_calls_it(job: Job) -> None:
    job.inputs(recipe="missing.yml", hf_token=TOKEN)

    done = subprocess.run(
        [sys.executable, "-m", "pearl_bot.actions"], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"::add-mask ::{TOKEN}"
    assert "::error title=pearl-bot%3A recipe failed::missing.yml: recipe file not found" in lines
    assert job.outputs()["status"] == "failed"


# --------------------------------------------------------------------------------------------
# action.yml and the workflows
# --------------------------------------------------------------------------------------------

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
YAML_FILES = [ROOT / "action.yml", *WORKFLOWS]
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict)
    return found


def all_steps(path: Path) -> list[dict[str, Any]]:
    data = load_yaml(path)
    if "runs" in data:
        return list(data["runs"]["steps"])
    return [step for job in data["jobs"].values() for step in job["steps"]]


def test_action_and_workflows_parse() -> None:
    assert {p.name for p in WORKFLOWS} >= {"nightly.yml", "ci.yml"}
    for path in YAML_FILES:
        assert all_steps(path), f"{path} has no steps"


def test_action_inputs_map_one_to_one_onto_the_cli() -> None:
    action = load_yaml(ROOT / "action.yml")
    assert set(action["inputs"]) == set(actions.ACTION_INPUTS)

    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {opt for a in run_parser._actions for opt in a.option_strings}
    positionals = {a.dest.upper() for a in run_parser._actions if not a.option_strings}
    cli_side = {cli for cli in actions.ACTION_INPUTS.values() if cli.startswith("-")}
    assert cli_side <= flags
    assert "RECIPE" in positionals and actions.ACTION_INPUTS["recipe"] == "RECIPE"
    # Every flag of `pearl-bot run` that changes what a run does has its input; the rest only
    # choose how the CLI prints, or are the negative form of a tri-state input.
    presentational = {"-h", "--help", "-v", "--verbose", "--json", "--out", "--no-create-pr"}
    assert flags - presentational == cli_side


def test_action_maps_each_input_through_env_into_the_entry_point() -> None:
    action = load_yaml(ROOT / "action.yml")
    (entry,) = [s for s in action["runs"]["steps"] if s.get("id") == "run"]
    assert entry["run"].strip() == "python -m pearl_bot.actions"
    for name in action["inputs"]:
        assert entry["env"][actions.input_env(name)] == "${{ inputs." + name + " }}"
    for name in ("changed", "revision", "commit-url", "pr-url"):
        assert action["outputs"][name]["value"] == "${{ steps.run.outputs." + name + " }}"


def test_no_expression_is_interpolated_into_a_run_script() -> None:
    for path in YAML_FILES:
        for step in all_steps(path):
            script = step.get("run", "")
            assert "${{" not in script, f"{path.name}: step {step.get('name')!r} interpolates"


def test_every_third_party_action_is_pinned_by_full_sha() -> None:
    pinned = 0
    for path in YAML_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*(?:- )?uses: (.+)$", line)
            if not match:
                continue
            ref = match.group(1)
            if ref.startswith("./"):
                continue
            assert SHA_PIN.match(ref), f"{path.name}: {ref!r} is not pinned by sha + version"
            pinned += 1
    assert pinned >= 5  # checkout and cache in nightly, checkout and setup-python in CI and action


def test_nightly_triggers_permissions_and_concurrency() -> None:
    nightly = load_yaml(ROOT / ".github" / "workflows" / "nightly.yml")
    on = triggers(nightly)
    minute = on["schedule"][0]["cron"].split()[0]
    assert minute.isdigit() and int(minute) not in (0, 30)
    inputs = on["workflow_dispatch"]["inputs"]
    assert {name: spec["type"] for name, spec in inputs.items()} == {
        "recipe": "string",
        "force": "boolean",
        "create-pr": "boolean",
        "dry-run": "boolean",
    }
    assert on["repository_dispatch"] == {"types": ["upstream-updated"]}
    assert nightly["permissions"] == {}

    (job,) = nightly["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    assert job["concurrency"]["cancel-in-progress"] is False
    assert "inputs.recipe" in job["concurrency"]["group"]
    assert 0 < job["timeout-minutes"] <= 360


def test_nightly_steps_checkout_cache_and_local_action() -> None:
    steps = load_yaml(ROOT / ".github" / "workflows" / "nightly.yml")["jobs"]["release"]["steps"]
    by_action = {step["uses"].split("@")[0]: step for step in steps}
    assert by_action["actions/checkout"]["with"]["persist-credentials"] is False
    cache = by_action["actions/cache"]["with"]
    assert "huggingface/hub" in cache["path"] and "hashFiles(env.RECIPE" in cache["key"]
    local = by_action["./"]["with"]
    assert local["hf-token"] == "${{ secrets.HF_TOKEN }}"
    assert set(local) == set(actions.ACTION_INPUTS) - {"working-directory"}


def test_ci_runs_the_ci_script_with_read_only_permissions() -> None:
    ci = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")
    assert ci["permissions"] == {}
    (job,) = ci["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash .ci/run"]
    assert job["steps"][0]["with"]["persist-credentials"] is False


# --------------------------------------------------------------------------------------------
# Integration: the nightly story through the Action, against the local Hub
# --------------------------------------------------------------------------------------------

HUB_RECIPE = """\
models:
  - model: tiny-org/base
  - model: tiny-org/math
    parameters: {density: 0.5, weight: 0.5}
  - model: tiny-org/chat
    parameters: {density: 0.5, weight: 0.5}
merge_method: ties
base_model: tiny-org/base
parameters: {normalize: true}
dtype: float32
publish:
  repo_id: pearl-bot-tester/tiny-ties
  create_pr: true
"""


def test_action_runs_the_nightly_story_against_the_local_hub(
    job: Job, local_hub: Any, hub_api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fixtures_hub import BOT_TOKEN

    family = build_family(
        tmp_path / "upstreams", ["tiny-org/base", "tiny-org/math", "tiny-org/chat"]
    )
    for repo_id, folder in family.items():
        local_hub.commit_folder(repo_id, folder, message="Upload model")
    Path("recipe.yml").write_text(HUB_RECIPE, encoding="utf-8")
    job.inputs(hf_token=BOT_TOKEN)

    # Run 1, scheduled: the first release is a commit on main.
    assert actions.main([]) == 0, capsys.readouterr()
    first = job.outputs()
    assert first["status"] == "released" and first["changed"] == "true"
    assert first["revision"] == local_hub.head("pearl-bot-tester/tiny-ties")
    assert first["revision"] in first["commit-url"] and first["pr-url"] == ""
    assert "**🚀 Released a new revision**" in job.summary()

    # An upstream moves; a webhook relay dispatches: the change lands as a Hub PR.
    moved = fine_tune(random_weights(TinyConfig(), 0), seed=99, noise=0.01)
    new_sha = local_hub.commit_folder(
        "tiny-org/math", write_model(tmp_path / "moved", moved, TinyConfig()), message="Retrain"
    )
    job.event(
        "repository_dispatch",
        {"action": "upstream-updated", "client_payload": {"repo": "tiny-org/math", "sha": new_sha}},
    )
    (job.root / "output").write_text("", encoding="utf-8")
    assert actions.main([]) == 0, capsys.readouterr()
    second = job.outputs()
    assert second["status"] == "pr-opened" and second["changed"] == "true"
    (pr,) = local_hub.pull_requests("pearl-bot-tester/tiny-ties")
    assert pr["status"] == "open" and second["revision"] == pr["head"]
    assert second["pr-url"].endswith(f"/discussions/{pr['num']}")
    endpoint = os.environ["HF_ENDPOINT"]
    assert f"({endpoint}/tiny-org/math/commit/{new_sha})" in job.summary()
    assert local_hub.head("pearl-bot-tester/tiny-ties") == first["revision"]

    # Run 3: nothing moved since the PR; nothing to do.
    job.event("schedule", {"schedule": "17 4 * * *"})
    (job.root / "output").write_text("", encoding="utf-8")
    assert actions.main([]) == 0, capsys.readouterr()
    third = job.outputs()
    assert third["status"] == "up-to-date" and third["changed"] == "false"

    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if BOT_TOKEN in line] == [f"::add-mask ::{BOT_TOKEN}"] * 3
    assert BOT_TOKEN not in job.summary()
