"""The audit section: what ``make audit`` found, in plain words, tiles with readable names, the
scores plain and leakage-aware, the pair and suspect tables with thumbnails, the contact sheets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .markup import (MAX_TABLE_ROWS, data_uri, details, esc, fmt, img_tag, kv_table, read_csv,
                     render_json, table)
from ..remembered import read_json

# Findings shown as tiles: (dotted key in summary.json, what it counts in words). Settings
# (how many pairs are listed per group, the memory plan, seeds) go to "How the audit ran".
TILES = [
    ("duplicates.pairs", "duplicate pairs"),
    ("duplicates.cross_split", "pairs across training and evaluated images"),
    ("duplicates.eval_with_train_duplicate", "evaluated images with a duplicate in training"),
    ("duplicates.label_disagree", "pairs whose labels differ"),
    ("duplicates.exact_groups", "groups of exact copies"),
    ("duplicates.largest_exact_group", "images in the largest copy group"),
    ("label_suspects.count", "label suspects"),
    ("label_suspects.expected_by_chance", "suspects expected from the head's errors alone"),
    ("dup_threshold", "duplicate threshold (cosine similarity)"),
]
READABLE = {  # column headings and setting names
    "accuracy": "accuracy", "accuracy_no_dups": "accuracy without duplicates",
    "cv_mean": "CV balanced accuracy", "cv_mean_groups": "CV, clusters kept whole",
    "cv_std": "CV sd", "cv_std_groups": "CV sd, clusters kept whole", "compare_cv_mean": "compare's CV",
    "compare_accuracy": "compare's accuracy", "settings": "settings",
    "suggested_label": "looks like", "p_label": "probability of its label",
    "p_suggested": "probability of the other", "label_quality": "label quality (low: suspect)",
    "cleanlab_issue": "flagged by cleanlab", "similarity": "cosine similarity",
    "cross_split": "across the split", "label_disagree": "labels differ",
    "exact_pairs_listed_per_group": "exact pairs listed per copy group",
    "dup_threshold_rule": "duplicate threshold rule", "dup_threshold_setting": "DUP_THRESHOLD",
    "dup_threshold_basis": "threshold measured on", "memory_plan": "memory plan", "search": "search",
    "method": "method", "n_jobs": "parallel fits", "memory_gb": "memory budget (GiB)",
    "resident_gb": "held before the fits (GiB)", "estimate_gb": "estimated peak (GiB)",
    "components": "Nystroem components", "reason": "why",
}


def readable(key: str) -> str:
    """A summary key in words: from :data:`READABLE`, else its underscores as spaces."""
    return READABLE.get(key, key.replace("_", " "))


def _lookup(summary: dict, dotted: str):
    value = summary
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _tiles(summary: dict) -> str:
    shown = [(label, v) for key, label in TILES
             if isinstance(v := _lookup(summary, key), (int, float)) and not isinstance(v, bool)]
    if not shown:
        return ""
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{esc(fmt(v))}</div><div class="k">{esc(k)}</div></div>'
        for k, v in shown) + "</div>"


def _scores(scores) -> str:
    if not isinstance(scores, dict) or not scores:
        return ""
    rows = [{"head": h, **{k: v for k, v in s.items() if not k.startswith(("folds", "n_"))}}
            for h, s in scores.items() if isinstance(s, dict)]
    df = pd.DataFrame(rows)
    return "<h3>Scores: plain and leakage-aware</h3>" + table(df, cls="num", header=readable)


def _how_it_ran(summary: dict) -> str:
    keep = {k: v for k, v in summary.items() if k not in {"scores", "in_words", "label_conflicts", "files"}
            and not (isinstance(v, (int, float)) and any(key == k for key, _ in TILES))}
    if not keep:
        return ""

    def value(v):
        if isinstance(v, dict):
            return kv_table((readable(k), value(x)) for k, x in v.items())
        return render_json(v)

    return details("How the audit ran: thresholds, search, memory plan, settings",
                   kv_table((readable(k), value(v)) for k, v in keep.items()))


def _audit_table(df: pd.DataFrame | None, name: str, thumbs, known_paths: set, in_dir: Path) -> str:
    if df is None:
        return f"<p>No <code>{esc(name)}</code>.</p>"
    if df.empty:
        return f"<p><code>{esc(name)}</code>: none found.</p>"
    shown = df.head(MAX_TABLE_ROWS)
    path_cols = [c for c in df.columns if "path" in c.lower() or
                 shown[c].head(5).map(lambda v: v in known_paths).any()]

    def cell(col, value):
        if col in path_cols and isinstance(value, str) and value and (
                value in known_paths or (in_dir / value).is_file()):
            return f'{img_tag(thumbs(value), value, "thumb small")}<div class="path">{esc(value)}</div>'
        return None

    note = (f'<p class="note">the first {MAX_TABLE_ROWS} of {len(df)} rows of <code>{esc(name)}</code></p>'
            if len(df) > MAX_TABLE_ROWS else f'<p class="note">{len(df)} rows of <code>{esc(name)}</code></p>')
    return table(shown, cell, cls="audit", header=readable) + note


def _sheets(folder: Path) -> str:
    sheets = sorted(folder.glob("*.png"))
    if not sheets:
        return ""
    words = {"duplicates.png": "The top duplicate pairs, side by side.",
             "label_suspects.png": "The top label suspects, each with the class it looks like."}
    figs = "".join(f'<figure>{img_tag(data_uri(p.read_bytes(), "image/png"), p.name, "fig sheet")}'
                   f"<figcaption>{esc(words.get(p.name, 'A contact sheet of the audit.'))}</figcaption></figure>"
                   for p in sheets)
    return f'<h3>Contact sheets</h3><div class="figs">{figs}</div>'


def section_audit(out: Path, thumbs, known_paths: set, in_dir: Path) -> str:
    """The audit in ``OUT/audit/``, or how to make one."""
    folder = out / "audit"
    if not (folder / "summary.json").is_file():
        return ("<p>No audit yet: run <code>make audit</code> (near-duplicates across splits, label "
                "suspects, leakage-aware scores), then <code>make report</code> again.</p>")
    summary = read_json(folder / "summary.json")
    parts = []
    if summary is None:
        parts.append('<p class="warn"><code>audit/summary.json</code> could not be read as a JSON object.</p>')
        summary = {}
    words = summary.get("in_words")
    if isinstance(words, list) and words:
        parts.append("".join(f"<p>{esc(w)}</p>" for w in words))
    parts += [_tiles(summary), _scores(summary.get("scores")), _how_it_ran(summary)]
    parts.append("<h3>Near-duplicate pairs</h3>")
    parts.append(_audit_table(read_csv(folder / "duplicates.csv"), "duplicates.csv", thumbs, known_paths, in_dir))
    parts.append("<h3>Label suspects</h3>")
    parts.append(_audit_table(read_csv(folder / "label_suspects.csv"), "label_suspects.csv", thumbs,
                              known_paths, in_dir))
    parts.append(_sheets(folder))
    return "".join(parts)
