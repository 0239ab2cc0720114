"""The report's HTML kit: the stylesheet, escaping, tables and embedded images that ``report.html``, ``compare.html``
and the caption report are built from (pages import it; it imports no page)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from fewclip.fileio import read_csv

THUMBNAIL_PX = 96

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2330; background: #fff; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 3px solid #4c72b0; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccd; padding-bottom: .2em; }
h1 { font-size: 1.6em; margin: 0 0 .3em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.9em; display: block; max-width: 100%;
        overflow-x: auto; }  /* a table wider than the column (30 classes) scrolls inside it */
th, td { border: 1px solid #ccd; padding: .25em .6em; text-align: right; vertical-align: middle; }
th { background: #eef1f7; }
td.text, th.text { text-align: left; }
tr.ensemble td { font-weight: bold; }
.headline { font-size: 1.2em; background: #e8f0fb; border-left: 5px solid #4c72b0; padding: .6em 1em; }
.missing { background: #fff4e5; border-left: 5px solid #e69500; padding: .4em 1em; }
.f1, .bal { color: #555; font-size: .85em; }
.winner { color: #1a7f37; font-size: .8em; }
.note { color: #666; font-style: italic; }
.placeholder { display: inline-block; width: 96px; height: 60px; background: #eee; color: #a00;
               font-size: .75em; text-align: center; padding-top: 30px; }
img { max-width: 100%; height: auto; }
td.text { overflow-wrap: anywhere; }
#answer p { font-size: 1.3em; margin: .3em 0; }
#answer p:first-child { font-weight: 600; }
figure { margin: .6em 0; }
figcaption { font-size: .85em; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .4em; }
table.leaderboard { font-size: .95em; }
table.leaderboard td:first-child { white-space: nowrap; }
details { margin-top: .8em; }
details > summary { cursor: pointer; }
details > summary h2 { display: inline; font-size: 1.3em; }
details[open] > summary h2 { display: inline; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class ArtifactPage:
    """A page built from a run directory's files: embeds them and records the expected ones it did not find."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing_files: list[str] = []

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def image(self, path: Path, alt: str, element_id: str = "") -> str:
        """The PNG as an <img> data URI with its size (the page's layout does not wait for decoding), or a note
        (and a missing-artifact entry) when the file is absent."""
        if not path.is_file():
            self.missing_files.append(self.relative(path))
            return f'<p class="note">{esc(alt)}: no figure ({esc(self.relative(path))} is absent)</p>'
        png = path.read_bytes()
        with Image.open(io.BytesIO(png)) as image:
            width, height = image.size
        named = f' id="{esc(element_id)}"' if element_id else ""
        return f'<img{named} src="{data_uri(png)}" width="{width}" height="{height}" alt="{esc(alt)}">'

    def csv(self, path: Path) -> list[dict[str, str]] | None:
        if not path.is_file():
            self.missing_files.append(self.relative(path))
            return None
        return read_csv(path)


def titled_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    css_class: str,
    text_columns: Sequence[int],
    empty: str,
) -> str:
    """A bold title, then ``table``, or a note saying ``empty`` when there are no rows."""
    body = table(header, rows, css_class, text_columns) if rows else f'<p class="note">{esc(empty)}</p>'
    return f"<p><b>{esc(title)}</b></p>{body}"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    css_class: str = "",
    text_columns: Sequence[int] = (0,),
    element_id: str = "",
) -> str:
    """Cells are HTML already (callers escape); columns in ``text_columns`` align left, numbers right."""

    def cell(tag: str, i: int, content: str) -> str:
        return f'<{tag} class="text">{content}</{tag}>' if i in text_columns else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    named = f' id="{esc(element_id)}"' if element_id else ""
    return f'<table{named} class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def mean_std_text(mean: float, std: float) -> str:
    """Percent, two decimals: ``47.22 ± 11.79``."""
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def thumbnail(path: Path) -> str:
    """A ~96 px PNG <img> of an image file, or a placeholder when it is missing or unreadable."""
    if not path.is_file():
        return '<span class="placeholder">image not found</span>'
    try:
        with Image.open(path) as image:
            image.draft("RGB", (2 * THUMBNAIL_PX, 2 * THUMBNAIL_PX))  # JPEG: decode at a reduced size
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (OSError, ValueError, SyntaxError):
        return '<span class="placeholder">unreadable image</span>'
    return f'<img class="thumb" src="{data_uri(buffer.getvalue())}" alt="{esc(path.name)}">'
