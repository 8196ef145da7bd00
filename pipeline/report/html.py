"""Render a :class:`~pipeline.report.document.Document` as ONE self-contained HTML page.

No external resources: styles are inline and plots are inline SVG, so the file can be mailed or
archived as is.
"""

from __future__ import annotations

from html import escape
from typing import Dict, List, Optional

from pipeline.report.blocks import Document, Figure, Para, Table

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;border-bottom:2px solid #333;padding-bottom:.3em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
tr.flag td{background:#fff3cd;font-weight:600}
caption{text-align:left;font-weight:600;padding:.2em 0}
.alerts{border:2px solid #d9822b;background:#fff3cd;padding:.6em 1em;margin:1em 0;border-radius:4px}
.alerts h2{margin-top:.2em;border:none}
p.warning{background:#fff3cd;border-left:5px solid #d9822b;padding:.4em .7em;font-weight:600}
pre{background:#f6f8fa;padding:.7em;overflow:auto;font-size:.8em;max-height:30em}
figure{margin:1em 0}
figure svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
nav a{margin-right:.8em}
"""


def _table(t: Table) -> str:
    parts = ["<table>"]
    if t.caption:
        parts.append(f"<caption>{escape(t.caption)}</caption>")
    if any(t.headers):
        parts.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.headers) + "</tr>")
    for i, row in enumerate(t.rows):
        cls = ' class="flag"' if i in t.flagged else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _para(p: Para) -> str:
    if p.kind == "code":
        return f"<pre>{escape(p.text)}</pre>"
    if p.kind == "heading":
        return f"<h3>{escape(p.text)}</h3>"
    if p.kind == "warning":
        return f'<p class="warning">⚠ {escape(p.text)}</p>'
    return f"<p>{escape(p.text)}</p>"


def _figure(f: Figure, plots: Dict[str, Optional[str] | Exception]) -> str:
    svg = plots.get(f.key)
    if isinstance(svg, str):
        return f'<figure id="plot-{escape(f.key)}">{svg}<figcaption>{escape(f.caption)}</figcaption></figure>'
    if isinstance(svg, Exception):
        why = f"plot could not be drawn: {type(svg).__name__}: {svg}"
    else:
        why = f"no plot: {f.missing_reason or 'data missing'}"
    return f'<p class="warning">{escape(why)}</p>'


def render_html(doc: Document, plots: Dict[str, Optional[str] | Exception]) -> str:
    """The whole report as one HTML page.

    Args:
        doc: the report content.
        plots: plot key -> inline SVG text, None (no data) or the exception that prevented it.
    """
    body: List[str] = [f"<h1>{escape(doc.title)}</h1>"]
    if doc.alerts:
        body.append('<div class="alerts" id="not-run"><h2>⚠ What did not run</h2>')
        body += [_para(a) for a in doc.alerts]
        body.append("</div>")
    body.append(
        "<nav>" + "".join(f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>' for s in doc.sections) + "</nav>"
    )
    for section in doc.sections:
        body.append(f'<section id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                body.append(_table(block))
            elif isinstance(block, Figure):
                body.append(_figure(block, plots))
            else:
                body.append(_para(block))
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(doc.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
