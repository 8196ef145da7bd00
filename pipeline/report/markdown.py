"""Render a :class:`~pipeline.report.document.Document` as GitHub-flavoured Markdown."""

from __future__ import annotations

from typing import List

from pipeline.report.blocks import Document, Figure, Para, Table


def _cell(text: str) -> str:
    # A '|' would end the cell and a newline the row.
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def md_table(table: Table) -> List[str]:
    """Lines of a Markdown table; flagged rows are bolded."""
    lines = [f"**{table.caption}**", ""] if table.caption else []
    headers = [h or " " for h in table.headers]
    lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for i, row in enumerate(table.rows):
        cells = [_cell(c) for c in row]
        if i in table.flagged:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _para(p: Para) -> List[str]:
    if p.kind == "warning":
        return [f"> **⚠ {p.text}**", ""]
    if p.kind == "heading":
        return [f"### {p.text}", ""]
    if p.kind == "code":
        return ["```", p.text, "```", ""]
    return [p.text, ""]


def render_markdown(doc: Document) -> str:
    """The whole report as Markdown text (plots are referenced, they live in report.html)."""
    lines = [f"# {doc.title}", ""]
    if doc.alerts:
        lines += ["## ⚠ What did not run", ""]
        for alert in doc.alerts:
            lines += _para(alert)
    lines += ["Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections), ""]
    for section in doc.sections:
        lines += [f'<a id="{section.anchor}"></a>', f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += md_table(block)
            elif isinstance(block, Figure):
                if block.html_only:
                    continue
                lines += [f"*Plot: {block.caption} See report.html (inline SVG).*", ""]
            else:
                lines += _para(block)
    return "\n".join(lines).rstrip() + "\n"
