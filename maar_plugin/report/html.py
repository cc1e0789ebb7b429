"""One self-contained HTML page of a report: tables, cactus plot, funnel, counterexamples.

Everything is inline: figures as base64 PNG ``data:`` URLs, the style sheet and a few lines of vanilla
JavaScript that sort the per-instance table when a header is clicked. Nothing is fetched when the page
opens, so it can be mailed, archived or opened offline.
"""
from __future__ import annotations

import base64
from html import escape

from maar_plugin.report.build import Figure, Report
from maar_plugin.report.tables import aligned_rows, summary_rows
from maar_plugin.verification import margin_text, stage_table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 3em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td.name { text-align: left; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
td.v-unsat { background: #e3f4e8; } td.v-sat { background: #fde8d4; }
td.v-timeout, td.v-unknown { color: #777; } td.v-error, td.v-killed { color: #b00020; }
td small { color: #666; }
tr.differs td { background-image: linear-gradient(#fff7d6, #fff7d6); }
tr.contradiction td { background: #f8c9c9; font-weight: bold; }
.alert { background: #f8c9c9; border: 1px solid #b00020; padding: 0.6em 1em; margin: 1em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
.gallery { display: flex; flex-wrap: wrap; gap: 0 2%; } .gallery figure { width: 49%; margin: 0.6em 0; }
td.verdict { white-space: nowrap; }
.muted { color: #666; font-size: 0.9em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (header, column) {
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var key = function (row) {
        var cell = row.cells[column];
        return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
      };
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = Number(x), ny = Number(y);
        var order = (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) ? nx - ny
                    : x.localeCompare(y, undefined, {numeric: true});
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def image_tag(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(figure.caption)}" data-name="{escape(figure.name)}">'


def _figure(figure: Figure) -> str:
    return f"<figure>{image_tag(figure)}<figcaption>{escape(figure.caption)}</figcaption></figure>"


def _table(rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f'<td{" class=name" if i == 0 else ""}>{escape(cell)}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows[1:])
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def instance_table_html(report: Report) -> str:
    """The sortable per-instance table: csv position, instance, then a verdict and a seconds column per
    source; rows where the sources disagree are tinted, sat-vs-unsat contradictions red."""
    headers = ["#", "instance"] + [cell for source in report.sources
                                   for cell in (f"{source.label} verdict", f"{source.label} s")]
    lines = []
    for position, row in enumerate(aligned_rows(report.sources), start=1):
        verdicts = {result.verdict for result in row.results if result is not None}
        css = "contradiction" if row.contradiction else ("differs" if len(verdicts) > 1 else "")
        cells = [f'<td data-sort="{position}">{position}</td>', f'<td class="name">{escape(row.instance)}</td>']
        for result in row.results:
            if result is None:
                cells += ['<td data-sort="">-</td>', '<td data-sort="Infinity">-</td>']
                continue
            stage = f" <small>{escape(result.stage)}</small>" if result.stage else ""
            margin = margin_text(result)
            title = escape(" ".join(filter(None, [result.stage and f"stage {result.stage}",
                                                  margin != "-" and f"margin {margin}", result.message])))
            verdict = escape(result.verdict)
            cells += [f'<td class="verdict v-{verdict}" data-sort="{verdict}" title="{title}">{verdict}{stage}</td>',
                      f'<td data-sort="{result.seconds!r}">{result.seconds:.3f}</td>']
        lines.append(f'<tr class="{css}">' + "".join(cells) + "</tr>")
    head = "".join(f"<th>{escape(cell)}</th>" for cell in headers)
    return (f'<table class="sortable" id="instance-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(lines)}</tbody></table>")


def html_page(report: Report, title: str = "Verification report") -> str:
    """The whole page as one string."""
    contradictions = [row.instance for row in aligned_rows(report.sources) if row.contradiction]
    parts = [f"<h1>{escape(title)}</h1>",
             "<p class=muted>" + "; ".join(f"{escape(source.label)}: {escape(str(source.folder))}"
                                           for source in report.sources) + "</p>"]
    if contradictions:
        parts.append(f'<div class="alert">{len(contradictions)} sat-vs-unsat contradiction(s) between the sources: '
                     f"{escape(', '.join(contradictions))}</div>")
    parts += ['<section id="summary"><h2>Summary</h2>', _table(summary_rows(report.sources)), "</section>",
              '<section id="cactus"><h2>Cactus plot</h2>', _figure(report.cactus), "</section>"]
    staged = [source for source in report.sources if source.has_stages]
    if report.funnel is not None:
        parts += ['<section id="funnel"><h2>Stage funnel</h2>', _figure(report.funnel)]
        for source in staged:
            parts.append(f"<h3>{escape(source.label)}</h3><pre>{escape(stage_table(source.results))}</pre>")
        parts.append("</section>")
    parts += ['<section id="instances"><h2>Per instance</h2>',
              "<p class=muted>Click a header to sort. Red rows: one source says sat, another unsat; "
              "yellow rows: the verdicts differ otherwise (a source without the instance aside).</p>",
              instance_table_html(report), "</section>"]
    if report.counterexamples or report.notes:
        parts.append('<section id="counterexamples"><h2>Counterexamples</h2>')
        parts.append('<div class="gallery">' + "".join(_figure(figure) for figure in report.counterexamples) + "</div>")
        if not report.counterexamples:
            parts.append("<p class=muted>No counterexample on an image input to draw.</p>")
        if report.notes:
            parts.append("<ul class=muted>" + "".join(f"<li>{escape(note)}</li>" for note in report.notes) + "</ul>")
        parts.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")
