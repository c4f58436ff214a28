"""The comparison sections: the compact table (verdict up front), the full one folded, how the
settings were chosen, and the backbone x head matrix of a ``BACKBONES`` run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .markup import data_uri, details, esc, img_tag, read_csv, table

COMPACT_NOTE = ("accuracy: on the evaluated images, which nothing was fitted or tuned on (Wilson "
                "interval); CV: balanced accuracy cross-validated on the training part (corrected "
                "resampled t interval), which picks the best head; verdict: <em>tied</em> when the "
                "corrected paired t on the same folds, after Holm's adjustment, cannot tell a head "
                "from the best, else <em>worse</em>.")


def _ci(score: float, ci) -> str:
    low, high = ci
    text = f"{score:.3f}"
    return text + (f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else "")


def compact_table(answer) -> str:
    """One row per head, best first: head, verdict, both scores with intervals, the CV spread and
    the settings; few enough columns that the verdict is in view at 1280 px without scrolling."""
    rows = [{"head": h.head, "verdict": h.verdict, "accuracy (95% CI)": _ci(h.accuracy, h.accuracy_ci),
             "CV balanced accuracy (95% CI)": _ci(h.cv_mean, h.cv_ci), "CV sd": f"{h.cv_std:.3f}",
             "settings": h.params} for h in answer.ranked]
    df = pd.DataFrame(rows)

    def cell(col, value):
        if col == "head":
            mark = ' <span class="best">best</span>' if value == answer.best.head else ""
            return f"<strong>{esc(value)}</strong>{mark}"
        if col == "settings":
            return f"<code>{esc(value)}</code>"
        return esc(value)  # already formatted

    return table(df, cell, cls="num compact", row_cls=lambda row: "best-row" if row[0] == answer.best.head else "")


def more_data_sentence(out: Path, run: dict, best: str | None) -> str:
    """Would more images help the best head: from ``learning_curve.csv``, about ``best``."""
    from ..curves import more_data_would_help

    curve = read_csv(out / "learning_curve.csv")
    if curve is not None and {"head", "train_size", "score_mean", "score_std"} <= set(curve.columns):
        for col in ("train_size", "score_mean", "score_std"):
            curve[col] = pd.to_numeric(curve[col], errors="coerce")
        return more_data_would_help(curve, best=best)
    return str(run.get("more_data") or "")


def section_comparison(out: Path, comparison: pd.DataFrame | None, answer, heads: list[str], run: dict) -> str:
    """The compact table, the verdict in words, the full table folded, tuning and splits, the
    learning-curve sentence and each head's classification report."""
    if comparison is None or answer is None:
        return "<p><code>comparison.csv</code> is missing: run <code>make compare</code>.</p>"
    parts = [compact_table(answer), f'<p class="note">{COMPACT_NOTE}</p>']
    parts.append(details(f"All {len(comparison.columns)} columns of comparison.csv",
                         table(comparison, cls="num")
                         + '<p class="note">balanced accuracy and macro F1 on the evaluated images; '
                           "accuracy_no_dups without the evaluated images that have a duplicate in the "
                           "training part; <code>p_vs_best</code>: the corrected paired t on the same "
                           "folds, <code>p_mcnemar</code>: McNemar's exact test on the evaluated "
                           "images; seconds are timings, not results.</p>"))
    parts.append(tuning_note(run))
    sentence = more_data_sentence(out, run, answer.best.head)
    if sentence:
        drawn = (out / "figures" / "learning_curve.png").is_file()
        parts.append(f"<p><strong>More images?</strong> {esc(sentence)}"
                     + (" See the learning curves under Figures." if drawn else "") + "</p>")
    for head in heads:
        txt = out / "reports" / f"{head}.txt"
        if txt.is_file():
            parts.append(details(f"classification report: {head}",
                                 f"<pre>{esc(txt.read_text(encoding='utf-8', errors='replace'))}</pre>"))
    return "".join(parts)


def tuning_note(run: dict) -> str:
    """How each head's settings (the ``settings`` column) were chosen, and what each split was for."""
    tuning, use = run.get("tuning") or {}, run.get("split_use") or {}
    parts = []
    if tuning:
        grids = tuning.get("grids") or {}
        searched = "; ".join(f"{esc(h)}: " + ", ".join(f"{esc(k)} in {esc(v)}" for k, v in g.items())
                             for h, g in grids.items())
        parts.append(f"<p><strong>Settings:</strong> tuning {esc(tuning.get('rule', ''))}"
                     + (f". Grids: {searched}" if searched else "")
                     + ". The chosen settings are the <code>settings</code> column (<code>params</code> "
                       "in comparison.csv)"
                     + ("; <code>tuning.csv</code> lists every candidate or fold" if tuning.get("mode") != "off" else "")
                     + ".</p>")
    if use:
        parts.append("<p><strong>Splits:</strong> " + "; ".join(f"<code>{esc(k)}</code>: {esc(v)}"
                                                              for k, v in use.items()) + ".</p>")
    return "".join(parts)


def section_backbones(out: Path, run: dict) -> str | None:
    """The backbone x head matrix of a ``BACKBONES`` run (None when OUT holds one backbone's run)."""
    matrix = read_csv(out / "backbones.csv")
    if not run.get("backbones") or matrix is None:
        return None
    best = run.get("best_backbone", "")
    parts = [f"<p>Every head on every backbone, on the same images, split and folds. The best "
             f"cross-validated cell is on <strong>{esc(best)}</strong>: the other sections of this "
             "page show its run; each backbone's full outputs are in <code>OUT/&lt;backbone&gt;/</code> "
             f"(<code>make report OUT={esc(out / best)}</code> writes the page of one).</p>"]
    if run.get("same_split") is False:
        parts.append('<p class="warn">The backbones\' splits differ (GROUPS=dups draws each '
                     "backbone's duplicate clusters from its own embeddings).</p>")
    verdict = (run.get("backbone_test") or {}).get("verdict")
    if verdict:
        parts.append(f"<p><strong>Across backbones:</strong> {esc(verdict)} (each backbone's best head "
                     "against the best cell: <code>backbone_verdict</code> below).</p>")
    heat = out / "backbones.png"
    if heat.is_file():
        image = img_tag(data_uri(heat.read_bytes(), "image/png"), "heat map of the backbone x head matrix", "fig")
        parts.append(f"<figure>{image}<figcaption>cv_mean (± cv_std) and the accuracy on the evaluated "
                     "images of every head on every backbone.</figcaption></figure>")
    parts.append(table(matrix, cls="num"))
    parts.append('<p class="note"><code>backbones.csv</code>: one row per backbone and head; '
                 "dim is the embedding dimension, features_key the cache it was read from.</p>")
    return "".join(parts)
