"""The command line: help everywhere, known errors as one line and exit code 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pearl_bot.cli import DEBUG_ENV, main

SUBCOMMANDS = ["check", "merge", "card", "publish", "run", "demo"]


@pytest.mark.parametrize("script", ["pearl-bot", "hf-pearl"])
def test_console_scripts_show_help(script: str) -> None:
    exe = shutil.which(script)
    assert exe is not None, f"{script} is installed as a console script"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert f"usage: pearl-bot {name}" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pearl_bot", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("pearl-bot ")


def test_known_error_is_one_line_and_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text("models: []\nmerge_method: ties\n")
    assert main(["check", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "models: must list at least one model" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_debug_variable_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(["check", str(tmp_path / "missing.yml")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["merge", "recipe.yml"])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_hf_cli_runs_pearl_as_an_extension(tmp_path: Path) -> None:
    """`hf pearl ...` runs our `hf-pearl` script once it is registered as an hf CLI extension
    (what `hf extensions install OWNER/hf-pearl` writes), with no network involved."""
    from huggingface_hub.cli.extensions import MANIFEST_FILENAME

    script = Path(sys.executable).parent / "hf-pearl"
    assert script.is_file(), "the hf-pearl console script is installed beside python"
    manifest = {
        "owner": "pearl-bot",
        "repo": "hf-pearl",
        "repo_id": "pearl-bot/hf-pearl",
        "short_name": "pearl",
        "executable_path": str(script),
        "type": "python",
        "installed_at": "2026-12-01T00:00:00+00:00",
    }
    folder = tmp_path / ".local" / "share" / "hf" / "extensions" / "hf-pearl"
    folder.mkdir(parents=True)
    (folder / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }

    hf = [sys.executable, "-m", "huggingface_hub.cli.hf"]
    out = subprocess.run([*hf, "pearl", "--help"], env=env, capture_output=True, text=True)

    assert out.returncode == 0, out.stderr
    assert "usage: hf pearl" in out.stdout and "demo" in out.stdout


def test_json_errors_are_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yml"
    recipe.write_text("models: []\nmerge_method: ties\n")

    assert main(["check", str(recipe), "--json"]) == 1

    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": json.loads(out)["error"]}
    assert "models: must list at least one model" in json.loads(out)["error"]
    assert err.startswith("error: ")


def test_offline_mode_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        "models:\n  - model: org/a\n    parameters: {weight: 1}\nmerge_method: linear\n"
    )

    assert main(["check", str(recipe)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("error: ") and "offline" in err.lower()
    assert "Traceback" not in err and err.count("\n") == 1


def test_merge_refuses_a_used_out_folder_before_any_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        "models:\n  - model: org/a\n    parameters: {weight: 1}\nmerge_method: linear\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    assert main(["merge", str(recipe), "--out", str(out)]) == 1

    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_hf_pearl_names_itself_hf_pearl(monkeypatch: pytest.MonkeyPatch) -> None:
    from pearl_bot.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["/usr/bin/hf-pearl"])
    assert build_parser().prog == "hf pearl"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pearl-bot"])
    assert build_parser().prog == "pearl-bot"
