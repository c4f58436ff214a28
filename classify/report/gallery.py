"""The gallery of misclassified evaluated images, each with every head's prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .markup import esc, fmt, img_tag

MAX_GALLERY = 60


def misclassified(pred: pd.DataFrame | None, heads: list[str]) -> pd.DataFrame:
    """Rows of predictions.csv that at least one head got wrong, most heads wrong first."""
    if pred is None or "label" not in pred:
        return pd.DataFrame()
    present = [h for h in heads if h in pred]
    if not present:
        return pd.DataFrame()
    wrong = np.zeros(len(pred), int)
    for h in present:
        wrong += (pred[h].astype(str) != pred["label"].astype(str)).to_numpy()
    rows = pred.assign(_wrong=wrong)
    rows = rows[rows["_wrong"] > 0]
    return rows.sort_values(["_wrong", "path"], ascending=[False, True], kind="stable")


def _card(row: dict, heads: list[str], thumbs) -> str:
    lines = []
    for h in heads:
        ok = str(row[h]) == str(row["label"])
        score = row.get(f"{h}_score", "")
        lines.append(f'<li class="{"ok" if ok else "bad"}">{esc(h)}: {esc(row[h])}'
                     f'{f" <small>({esc(fmt(score))})</small>" if score != "" else ""}</li>')
    return (f'<div class="card">{img_tag(thumbs(row["path"]), row["path"], "thumb")}'
            f'<div class="path" title="{esc(row["path"])}">{esc(row["path"])}</div>'
            f'<div>true: <strong>{esc(row["label"])}</strong></div><ul>{"".join(lines)}</ul></div>')


def section_gallery(errors: pd.DataFrame, pred: pd.DataFrame | None, heads: list[str], thumbs,
                    max_gallery: int) -> str:
    """Up to ``max_gallery`` cards of the images the most heads got wrong."""
    if pred is None:
        return "<p><code>predictions.csv</code> is missing: run <code>make compare</code>.</p>"
    if errors.empty:
        return f"<p>No evaluated image was misclassified by any head ({len(pred)} evaluated).</p>"
    present = [h for h in heads if h in errors]
    shown = errors.head(max_gallery)
    cap = (f" Showing the first {len(shown)} of {len(errors)} (the cap is {max_gallery}), those the "
           "most heads got wrong first." if len(errors) > len(shown) else "")
    cards = "".join(_card(row, present, thumbs) for row in shown.to_dict("records"))
    return (f"<p>{len(errors)} of {len(pred)} evaluated images were misclassified by at least one "
            f"head.{cap} Red: a wrong prediction. Scores: the calibrated probability of the predicted "
            f'class, for every head.</p><div class="gallery">{cards}</div>')
