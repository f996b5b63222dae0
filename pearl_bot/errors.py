"""The error tree of pearl-bot.

Every error a user can cause or fix derives from `PearlBotError`. Each kind carries the
structured fields that say *where* the problem is (recipe file and field, upstream repo and
revision, tensor name, target repo), and its message says what failed, the offending value,
and the next action. The CLI turns these into one line and exit code 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class PearlBotError(Exception):
    """Base class of every error pearl-bot reports to its user."""

    #: Short name of the step that failed, used by the run report and the Action summary.
    step: str = "pearl-bot"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class RecipeError(PearlBotError, ValueError):
    """The recipe file cannot be read or is not valid.

    `path` is the recipe file and `field` the dotted field path (`models[2].parameters.density`).
    """

    step = "recipe"

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.field = field
        where = ": ".join(str(p) for p in (path, field) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class UpstreamError(PearlBotError):
    """An upstream model cannot be resolved or downloaded (missing, gated, private, bad ref)."""

    step = "upstream"

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        super().__init__(message, hint=hint)


class MergeError(PearlBotError):
    """The merge cannot run or would produce a broken model (shapes, NaN, bad files)."""

    step = "merge"

    def __init__(
        self,
        message: str,
        *,
        tensor: str | None = None,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.tensor = tensor
        self.path = Path(path) if path is not None else None
        super().__init__(message, hint=hint)


class CardError(PearlBotError):
    """The model card cannot be rendered (template error, undefined variable, bad scores)."""

    step = "card"

    def __init__(
        self, message: str, *, path: str | Path | None = None, hint: str | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(message, hint=hint)


class PublishError(PearlBotError):
    """The release cannot be pushed to the target repo; nothing was published."""

    step = "publish"

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        super().__init__(message, hint=hint)
