"""The few-shot section (``make compare SHOTS=...``): each head's score at k images per class."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..fewshot import summary
from .markup import data_uri, esc, img_tag, read_csv, table
from .plots import caption


def section_fewshot(out: Path, run: dict) -> str | None:
    """The figure, the classes left out at a k, and each head's mean, lowest and highest score per
    k over the draws; None when the run has no ``fewshot.csv``."""
    shots = read_csv(out / "fewshot.csv")
    if shots is None or not {"head", "shots", "score"} <= set(shots.columns):
        return None
    for col in ("shots", "score"):
        shots[col] = pd.to_numeric(shots[col], errors="coerce")
    info = run.get("fewshot") or {}
    parts = [f"<p>Each head at its fixed settings, fitted on k training images per class "
             f"({esc(info.get('draws', '?'))} seeded draws per k, the same images for every head), "
             "scored by balanced accuracy on the evaluated images of the classes drawn. From "
             "<code>fewshot.csv</code>.</p>"]
    for k, names in (info.get("classes_left_out") or {}).items():
        parts.append(f'<p class="warn">{esc(k)} shots: left out (fewer than {esc(k)} training '
                     f"images): {esc(', '.join(names))}</p>")
    png = out / "figures" / "fewshot.png"
    if png.is_file():
        text = caption(png)
        parts.append(f'<figure>{img_tag(data_uri(png.read_bytes(), "image/png"), text, "fig")}'
                     f"<figcaption>{esc(text)}</figcaption></figure>")
    parts.append(table(summary(shots), cls="num"))
    return "".join(parts)
