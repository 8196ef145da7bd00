"""The report's building blocks: paragraphs, tables, figure slots and sections, rendered to Markdown and HTML.

Shared by the report's document (``document.py``), its quantization section (``quant.py``) and comparisons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Union

from pipeline.report.fmt import MISSING, fmt_value


@dataclass
class Para:
    """A paragraph. ``kind``: ``text``, ``warning`` (shown prominently), ``code`` (preformatted) or
    ``heading`` (a sub-heading within a section)."""

    text: str
    kind: str = "text"


@dataclass
class Table:
    """A table of already-formatted cells; ``flagged`` rows are highlighted (skipped/failed stages)."""

    headers: List[str]
    rows: List[List[str]]
    caption: str = ""
    flagged: List[int] = field(default_factory=list)


@dataclass
class Figure:
    """A plot slot; ``key`` names a plot in :func:`pipeline.report.plots.all_plots`.

    ``html_only``: Markdown omits it (its numbers are in the tables next to it).
    """

    key: str
    caption: str
    missing_reason: str = ""
    html_only: bool = False


Block = Union[Para, Table, Figure]


@dataclass
class Section:
    """A titled section; ``anchor`` is its HTML id."""

    title: str
    anchor: str
    blocks: List[Block] = field(default_factory=list)


@dataclass
class Document:
    """The whole report: a title, alerts shown first (what did not run), then sections."""

    title: str
    alerts: List[Para]
    sections: List[Section]


def generic_blocks(obj: Any, caption: str = "") -> List[Block]:
    """Render any JSON-like value as tables: scalars (dotted keys for nested dicts) as key/value rows,
    each list of dicts as its own table with the union of keys as columns."""
    scalars: List[List[str]] = []
    tables: List[Block] = []

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping):
            if not value and prefix:
                scalars.append([prefix, MISSING])
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            cols: List[str] = []
            for row in value:
                cols += [str(k) for k in row if str(k) not in cols]
            rows = [[_cell(row.get(c)) for c in cols] for row in value]
            tables.append(Table(cols, rows, caption=prefix or caption))
        else:
            scalars.append([prefix or caption or "value", _cell(value)])

    walk(obj, "")
    return ([Table(["key", "value"], scalars, caption=caption)] if scalars else []) + tables


def _cell(value: Any) -> str:
    """One table cell: flat dicts as ``k=v`` pairs, nested containers as (truncated) JSON."""
    if isinstance(value, (Mapping, list)):
        inner = value.values() if isinstance(value, Mapping) else value
        if any(isinstance(v, (Mapping, list)) for v in inner):
            text = json.dumps(value, default=str)
        elif isinstance(value, Mapping):
            text = ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()) or MISSING
        else:
            text = fmt_value(value)
    else:
        text = fmt_value(value)
    return text if len(text) <= 300 else text[:297] + "..."
