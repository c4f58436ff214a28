"""HTML pieces of the report: escaping, tables, images as ``data:`` URIs, folded blocks."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd

MAX_TABLE_ROWS = 25
# Columns of names, not numbers: shown as written (a class "1.10" is not the number 1.1).
TEXT_COLUMNS = {"class", "label", "labels", "suggested_label", "path", "paths", "head", "split",
                "role", "sha256", "label_a", "label_b", "path_a", "path_b", "split_a", "split_b",
                "params", "verdict"}
# Columns of probabilities: a tiny one reads "< 0.001", not "0.0000".
PROBABILITY_COLUMNS = {"p_label", "p_suggested", "label_quality", "p_vs_best", "p_mcnemar"}


def esc(value) -> str:
    """HTML-escapes ``value``; a ``://`` in data (a path, a label) is written so that the page
    never contains a literal URL, yet reads the same."""
    return html.escape(str(value), quote=True).replace("://", ":&#47;&#47;")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def fmt(value) -> str:
    """A number rounded for reading (4 decimals, or 4 significant digits when large); text as is."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if "." in value or "e" in value.lower():
            return fmt(number)
    return str(value)


def fmt_probability(value) -> str:
    """A probability to 3 decimals; one below 0.001 (but not 0) reads ``< 0.001``."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return str(value)
    if p != p:  # NaN
        return "n/a"
    return "< 0.001" if 0 < p < 0.0005 else f"{p:.3f}"


def table(df: pd.DataFrame, cell=None, cls: str = "", header=None, row_cls=None) -> str:
    """An HTML table of ``df``; ``cell(column, value)`` may return HTML for a cell,
    ``header(column)`` the text of a column's heading (default: the column's name), and
    ``row_cls(row)`` a class for a row (a namedtuple of its values).

    Numbers are rounded for reading, except in :data:`TEXT_COLUMNS`, which hold names;
    probabilities (:data:`PROBABILITY_COLUMNS`) read ``< 0.001`` rather than ``0.0000``.
    """
    names = [header(c) if header else c for c in df.columns]
    head = "".join(f'<th data-col="{esc(c)}">{esc(n).replace("_", "_<wbr>")}</th>'
                   for c, n in zip(df.columns, names))
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, row):
            inner = cell(col, value) if cell else None
            shown = (value if col in TEXT_COLUMNS else
                     fmt_probability(value) if col in PROBABILITY_COLUMNS and str(value) != "" else fmt(value))
            cells.append(f"<td>{inner if inner is not None else esc(shown)}</td>")
        klass = row_cls(row) if row_cls else ""
        body.append((f'<tr class="{klass}">' if klass else "<tr>") + "".join(cells) + "</tr>")
    return (f'<div class="tw"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(pairs) -> str:
    """A two-column table of (name, HTML value) pairs."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def details(summary: str, body: str, cls: str = "") -> str:
    """A folded block: ``summary`` (text) shown, ``body`` (HTML) on a click."""
    return f'<details class="{cls}"><summary>{esc(summary)}</summary>{body}</details>'


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def img_tag(uri: str, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def render_json(value, depth: int = 0) -> str:
    """Any JSON value as HTML: flat dicts as key/value tables, lists of records as tables."""
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values())
                         for v in value.values()):
            df = pd.DataFrame.from_dict(value, orient="index").reset_index().rename(columns={"index": ""})
            return table(df, cls="num")
        return kv_table((k, render_json(v, depth + 1)) for k, v in value.items())
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            df = pd.DataFrame(value[:MAX_TABLE_ROWS])
            more = (f'<p class="note">first {MAX_TABLE_ROWS} of {len(value)}</p>'
                    if len(value) > MAX_TABLE_ROWS else "")
            return table(df.astype(str), cls="num") + more
        if all(not isinstance(v, (dict, list)) for v in value):
            return esc(", ".join(fmt(v) for v in value))
        return f"<pre>{esc(json.dumps(value, indent=1)[:4000])}</pre>"
    if value is None:
        return "&ndash;"
    return esc(fmt(value))


def read_csv(path) -> pd.DataFrame | None:
    """Reads a CSV as strings (labels like ``0`` stay labels); None when missing or unreadable."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
