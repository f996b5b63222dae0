"""The run report: what one `pearl-bot run` did, for people, for `--json` and for GitHub.

The orchestrator (`pearl_bot.run`) fills it in step by step; the CLI prints `summary()` or
`to_dict()`, and the Action (`pearl_bot.actions`) turns it into outputs and a job summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal[
    "up-to-date", "released", "pr-opened", "pr-updated", "no-change", "dry-run", "failed"
]


@dataclass
class UpstreamMove:
    """One upstream, with its locked and current revision."""

    key: str
    repo_id: str | None
    tracked: str | None
    locked: str | None
    current: str

    @property
    def moved(self) -> bool:
        return self.locked != self.current


@dataclass
class StepTiming:
    name: str
    seconds: float


@dataclass
class RunReport:
    """Everything a run decided and did; `ok` is false only when a step failed."""

    recipe: str
    repo_id: str | None
    status: Status = "up-to-date"
    forced: bool = False
    dry_run: bool = False
    upstreams: list[UpstreamMove] = field(default_factory=list)
    steps: list[StepTiming] = field(default_factory=list)
    revision: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    out_dir: str | None = None
    #: Files of the commit that was (or, in a dry run, would be) made: path -> size in bytes.
    files: dict[str, int] = field(default_factory=dict)
    commit_message: str | None = None
    #: Scores table rows for the summary: benchmark -> {model name -> value}.
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def changed(self) -> bool:
        """Whether a new revision was published (a commit or a PR revision)."""
        return self.status in ("released", "pr-opened", "pr-updated")

    @property
    def moved(self) -> list[UpstreamMove]:
        return [u for u in self.upstreams if u.moved]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["changed"] = self.changed
        return data

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [f"{self.recipe}: {self.status}" + (f" -> {self.repo_id}" if self.repo_id else "")]
        for up in self.upstreams:
            state = "new" if up.locked is None else ("moved" if up.moved else "unchanged")
            old = (up.locked or "none")[:12]
            lines.append(f"  {up.key}: {state} ({old} -> {up.current[:12]})")
        for step in self.steps:
            lines.append(f"  step {step.name}: {step.seconds:.1f}s")
        if self.dry_run and self.files:
            lines += self._planned_commit()
        elif self.out_dir:
            lines.append(f"  built in: {self.out_dir}")
        for label, value in (("commit", self.commit_url), ("pull request", self.pr_url)):
            if value:
                lines.append(f"  {label}: {value}")
        if self.error:
            lines.append(f"  failed at {self.failed_step}: {self.error}")
            if self.hint:
                lines.append(f"  fix: {self.hint}")
        return "\n".join(lines)

    def _planned_commit(self) -> list[str]:
        """What a dry run would have committed: the message, then each file and its size."""
        lines = [f"  would commit to {self.repo_id}: {self.commit_message or '(no message)'}"]
        lines += [f"    {path}  {_size(size)}" for path, size in sorted(self.files.items())]
        lines.append(f"  files left in: {self.out_dir}")
        return lines


def _size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
