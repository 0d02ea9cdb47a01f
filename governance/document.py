"""A tiny document model rendered twice: Markdown and standalone HTML from the same blocks.

A model card is a list of `Section`s; a section holds paragraphs (plain text) and tables
(header + rows of plain text). Both renderers escape what they print (Markdown table
cells: ``|`` and newlines; HTML: `html.escape`), so values taken from a run (site ids,
config strings) cannot inject markup.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """A table: ``header`` names the columns, each row has one text per column."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass
class Section:
    """One section: its title, where its content comes from, and its blocks in order.

    Attributes:
        title: the heading.
        basis: what the section answers to (model-card section, EU AI Act Annex IV point).
        sources: the lineage fields (or run files) its content is read from.
        blocks: paragraphs (``str``) and tables (`Table`).
    """

    title: str
    basis: str
    sources: str
    blocks: list[str | Table] = field(default_factory=list)

    def add(self, block: str | Table) -> None:
        self.blocks.append(block)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, intro: str, sections: list[Section]) -> str:
    """The document as GitHub-flavoured Markdown."""
    out = [f"# {title}", "", intro, ""]
    for sec in sections:
        out += [f"## {sec.title}", "", f"*{sec.basis}. Source: {sec.sources}.*", ""]
        for block in sec.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            else:
                out.append(block)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
        "color:#222}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;"
        "padding:.25rem .6rem;text-align:left;font-size:.9rem}th{background:#f3f3f3}"
        ".basis{color:#666;font-size:.85rem}code{font-size:.85rem}")


def to_html(title: str, intro: str, sections: list[Section]) -> str:
    """The document as one standalone HTML page (inline CSS, no scripts, no network)."""
    esc = html.escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    for sec in sections:
        out.append(f"<h2>{esc(sec.title)}</h2>")
        out.append(f'<p class="basis">{esc(sec.basis)}. Source: {esc(sec.sources)}.</p>')
        for block in sec.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                out.append(f"<p>{esc(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
