"""The data section: images per class and role, rejected files, label conflicts."""

from __future__ import annotations

import pandas as pd

from .markup import esc, table

MAX_REJECTED_ROWS = 100


def _counts(manifest: pd.DataFrame | None, split: pd.DataFrame | None) -> list[str]:
    parts = []
    if split is not None and {"label", "role"} <= set(split.columns):
        counts = pd.crosstab(split["label"], split["role"], margins=True, margins_name="total")
        order = [c for c in ("train", "eval", "tune", "unused", "total") if c in counts.columns]
        counts = counts[order + [c for c in counts.columns if c not in order]]
        counts = counts.reset_index().rename(columns={"label": "class"})
        parts.append("<h3>Images per class and role</h3><p>train: fitted and cross-validated on; "
                     "eval: the evaluated images behind every score and the gallery.</p>")
        parts.append(table(counts.astype(str), cls="num"))
    if manifest is not None and "split" in manifest and (manifest["split"] != "").any():
        counts = pd.crosstab(manifest["label"], manifest["split"].replace("", "(none)"), margins=True,
                             margins_name="total").reset_index().rename(columns={"label": "class"})
        parts.append("<h3>Images per class and split folder (the cache)</h3>")
        parts.append(table(counts.astype(str), cls="num"))
    elif manifest is not None:
        counts = manifest["label"].value_counts().sort_index().rename_axis("class").reset_index(name="images")
        parts.append("<h3>Images per class (the cache)</h3>")
        parts.append(table(counts.astype(str), cls="num"))
    return parts or ["<p>Neither split.csv nor the cache manifest could be read.</p>"]


def _rejected(rejected: pd.DataFrame | None, meta: dict) -> str:
    if rejected is None:
        return "<p>No <code>rejected.csv</code> in the cache.</p>"
    if rejected.empty:
        skipped = f" ({esc(meta['skipped'])} non-image files skipped)" if meta.get("skipped") else ""
        return f"<p>None: every image file was embedded{skipped}.</p>"
    shown = rejected.head(MAX_REJECTED_ROWS)
    note = f" (the first {MAX_REJECTED_ROWS} shown)" if len(rejected) > MAX_REJECTED_ROWS else ""
    return f'<p class="warn">{len(rejected)} file(s) could not be embedded{note}:</p>' + table(shown)


def label_conflicts_note(conflicts) -> str:
    """A warning with a table of the files filed under more than one label (run.json), or ""."""
    if not isinstance(conflicts, list) or not conflicts:
        return ""
    rows = [{"sha256": str(c.get("sha256", ""))[:12], "labels": ", ".join(map(str, c.get("labels", []))),
             "paths": ", ".join(map(str, c.get("paths", [])))} for c in conflicts if isinstance(c, dict)]
    return (f'<h3>Label conflicts</h3><p class="warn">{len(rows)} file(s) are filed under more than one '
            "label (the same content, by SHA-256). Their copies are kept together on one side of "
            "every split, but at most one label is right: fix or remove the others.</p>"
            + table(pd.DataFrame(rows, columns=["sha256", "labels", "paths"])))


def section_data(manifest: pd.DataFrame | None, split: pd.DataFrame | None, rejected: pd.DataFrame | None,
                 meta: dict, conflicts=None) -> str:
    """Counts per class (and role, and split folder), the rejected files and the label conflicts."""
    return ("".join(_counts(manifest, split)) + "<h3>Rejected files</h3>" + _rejected(rejected, meta)
            + label_conflicts_note(conflicts))
