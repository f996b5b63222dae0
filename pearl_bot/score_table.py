"""The scores section of the model card: the table the template prints.

`Scores` (see `pearl_bot.scores`) holds the numbers; this module turns them into display
records: a column per model (the merge first), a row per benchmark with the best cell marked
and the merge's delta against its best parent, and the list of sources, each linked only when
the link points at the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import Markup

from pearl_bot.scores import Score, Scores
from pearl_bot.upstream_cards import HUB_URL


@dataclass(frozen=True)
class ScoreCell:
    """One model's number on one benchmark, formatted (`—` when it has none)."""

    text: str
    best: bool


@dataclass(frozen=True)
class ScoreTableRow:
    """One benchmark and metric: a cell per column, and the merge's delta."""

    benchmark: str
    metric: str
    n_shot: str
    cells: list[ScoreCell]
    delta: str


@dataclass(frozen=True)
class ScoreSource:
    """Where one model's numbers came from; `url` is None unless it points at the Hub."""

    model: str
    source: str
    url: Markup | None


@dataclass(frozen=True)
class ScoreTable:
    """The scores section: a column per model (the merge first), a row per benchmark."""

    columns: list[str]
    rows: list[ScoreTableRow]
    sources: list[ScoreSource]
    has_merged: bool


def score_table(scores: Scores) -> ScoreTable:
    """The scores section's table: formatted cells, best marked, the merge's delta."""
    columns = scores.models()
    rows = []
    for row in scores.rows():
        compared = sum(cell is not None for cell in row.cells.values()) > 1
        cells = [_cell(row.cells.get(m), compared and m in row.best) for m in columns]
        first = next(s for s in row.cells.values() if s is not None)
        rows.append(
            ScoreTableRow(
                benchmark=row.benchmark,
                metric=row.metric,
                n_shot=str(first.n_shot) if first.n_shot is not None else "—",
                cells=cells,
                delta=f"{row.delta:+g}" if row.delta is not None else "—",
            )
        )
    sources = {(s.model, s.source): s.source_url for s in scores.items}
    return ScoreTable(
        columns=columns,
        rows=rows,
        sources=[ScoreSource(m, src, _safe_url(url)) for (m, src), url in sources.items()],
        has_merged=scores.merged in columns,
    )


def _cell(score: Score | None, best: bool) -> ScoreCell:
    if score is None:
        return ScoreCell("—", False)
    text = f"{score.value:g}"
    if score.stderr is not None:
        text += f" ± {score.stderr:g}"
    return ScoreCell(text, best)


def _safe_url(url: str | None) -> Markup | None:
    # The link is printed unescaped (Markup), so only a Hub URL, percent-quoted, is trusted.
    if url is None or not url.startswith(HUB_URL + "/"):
        return None
    return Markup(quote(url, safe=":/@"))
