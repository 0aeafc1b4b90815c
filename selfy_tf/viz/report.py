"""A small self-contained HTML report: headings, text, tables, images.

Images are referenced by paths relative to the report, so the report folder
can be moved or zipped as a whole.

Example:

>>> report = HTMLReport("Demo")
>>> report.add_table(["model", "top-1"], [["tsm_r18", "81.2 %"]])
>>> path = report.write(os.path.join(tmp_dir, "report.html"))
"""

from __future__ import annotations

import html
import os
from typing import Sequence

from selfy_tf.files import atomic_write_text

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


class HTMLReport:
    """Builds an HTML page piece by piece and writes it atomically.

    Args:
        title: page title and top heading.
    """

    def __init__(self, title: str):
        self.title = str(title)
        self._parts: list[str] = []

    def add_heading(self, text: str, level: int = 2) -> None:
        if level not in (2, 3, 4):
            raise ValueError(f"`level` must be 2, 3 or 4. Received: level={level!r}.")
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def add_paragraph(self, text: str) -> None:
        self._parts.append(f"<p>{html.escape(text)}</p>")

    def add_preformatted(self, text: str) -> None:
        self._parts.append(f"<pre>{html.escape(text)}</pre>")

    def add_table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        for index, row in enumerate(rows):
            if len(row) != len(headers):
                raise ValueError(
                    f"Table row {index} has {len(row)} cells; the table has "
                    f"{len(headers)} columns ({list(headers)}). Received: row={list(row)}."
                )
        head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def add_image(self, path: str, caption: str = "", base_dir: str | None = None) -> None:
        """Adds an image; `path` is made relative to `base_dir` (the report's folder)."""
        source = os.path.relpath(path, base_dir) if base_dir else path
        source = source.replace(os.sep, "/")
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img src="{html.escape(source)}" alt="{html.escape(caption or source)}">'
            f"{caption_html}</figure>"
        )

    def render(self) -> str:
        body = "\n".join(self._parts)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: str) -> str:
        """Writes the page to `path` (temporary file, then rename); returns the path."""
        return atomic_write_text(path, self.render())
