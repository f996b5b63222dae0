"""The README's promises: a two-command quick start that CI runs verbatim, and valid examples."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    """The commands of the Quick start section, extracted exactly as .ci/run extracts them."""
    script = r'/^## /{on = ($0 == "## Quick start")} on && /^```/{fence = !fence; next} on && fence'
    out = subprocess.run(
        ["awk", script, str(ROOT / "README.md")], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_quick_start_is_two_commands_that_install_cpu_torch_first() -> None:
    first, second = quick_start_commands()
    for command in (first, second):
        assert command.startswith("pip install torch==2.13.0 && "), command
    assert first.endswith("pearl-bot demo")
    assert second.endswith("python -m pytest")


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '"## Quick start"' in ci
    assert 'bash -c "${quick_start[0]}"' in ci and 'bash -c "${quick_start[1]}"' in ci


def test_readme_recipe_sections_match_the_recipe_model() -> None:
    from pearl_bot.recipe import BuildSection, CardSection, PublishSection, ScoresSection

    block = README[README.index("## The recipe") :]
    block = block[block.index("```yaml") + 7 : block.index("```\n", block.index("```yaml") + 7)]
    sections = {
        "publish": PublishSection,
        "card": CardSection,
        "scores": ScoresSection,
        "build": BuildSection,
    }
    for name, model in sections.items():
        keys = re.findall(rf"^{name}:.*\n((?:  .*\n)+)", block, flags=re.M)[0]
        written = set(re.findall(r"^  (\w+):", keys, flags=re.M))
        assert written == set(model.model_fields), f"README documents every `{name}` key"
