"""The one table writer: a header and rows of cells as Markdown, aligned plain text or HTML.

Notes (Markdown in optuna-dashboard), the report (Markdown and HTML) and the terminal tables
(``status``, a stage after it runs) all write their tables here.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A pipe table; a ``|`` inside a cell is escaped."""

    def cell(c: object) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the header underlined with dashes."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def to_html(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    inline: Callable[[str], str] = html.escape,
) -> str:
    """An HTML table; ``inline`` renders a cell (escaped as is by default)."""
    head = "".join(f"<th>{inline(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
