"""The answer of a comparison, stated once: the best head, who is tied with it, and its scores.

Every place that names a best head (the console, the report, the audit, ``make predict``'s default
head) reads it from here, so they cannot disagree. The rule is the one the verdicts use
(:func:`classify.stats.verdicts`): the best head has the highest cross-validated balanced accuracy
(``cv_mean``) of the settings that were reported; a head is ``tied`` when the corrected paired t
against the best, after Holm's adjustment, does not tell them apart, else ``worse``.

Two scores are given for each head, each with its 95% interval, and labelled as what they are:
the cross-validated balanced accuracy on the training part (``cv_mean``, ``cv_ci_*``), which picks
the best head, and the accuracy on the evaluated images (``accuracy``, ``accuracy_ci_*``), which
nothing was fitted or tuned on.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

WIDTH = 100  # the console table fits this many columns


@dataclasses.dataclass(frozen=True)
class HeadScore:
    """One head's row of the answer."""

    head: str
    verdict: str  # best, tied or worse
    accuracy: float
    accuracy_ci: tuple[float, float]
    cv_mean: float
    cv_std: float
    cv_ci: tuple[float, float]
    p_vs_best: float
    params: str


@dataclasses.dataclass(frozen=True)
class Answer:
    """The best head, the heads tied with it, the others, and how many images were evaluated."""

    best: HeadScore
    tied: tuple[HeadScore, ...]
    worse: tuple[HeadScore, ...]
    n_eval: int
    n_train: int

    @property
    def ranked(self) -> list[HeadScore]:
        """Every head, best first, then by cross-validated score."""
        rest = sorted(self.tied + self.worse, key=lambda h: (h.verdict != "tied", -h.cv_mean, h.head))
        return [self.best, *rest]

    def headline(self) -> str:
        """One sentence: the best head, its scores with intervals, and who is tied with it."""
        b = self.best
        text = (f"Best head: {b.head}, cross-validated balanced accuracy {b.cv_mean:.3f} "
                f"{_interval(b.cv_ci)}; accuracy on the {self.n_eval:,} evaluated images "
                f"{b.accuracy:.3f} {_interval(b.accuracy_ci)}.")
        if self.tied:
            names = ", ".join(h.head for h in self.tied)
            text += (f" Tied with it: {names} (the difference is within what other folds could "
                     "give).")
        elif self.worse:
            text += " Every other head is worse (paired test, Holm-adjusted p < 0.05)."
        return text


def _interval(ci: tuple[float, float]) -> str:
    low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return "[interval n/a]"
    return f"[{low:.3f}, {high:.3f}]"


def _float(row, col: str, default=float("nan")) -> float:
    value = row.get(col, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _head_score(row) -> HeadScore:
    return HeadScore(
        head=str(row["head"]), verdict=str(row.get("verdict", "")),
        accuracy=_float(row, "accuracy"),
        accuracy_ci=(_float(row, "accuracy_ci_low"), _float(row, "accuracy_ci_high")),
        cv_mean=_float(row, "cv_mean"), cv_std=_float(row, "cv_std"),
        cv_ci=(_float(row, "cv_ci_low"), _float(row, "cv_ci_high")),
        p_vs_best=_float(row, "p_vs_best"),
        params="" if pd.isna(row.get("params", "")) else str(row.get("params", "")))


def answer_of(comparison: pd.DataFrame) -> Answer:
    """The answer of one comparison table (``comparison.csv`` as compare writes it).

    Args:
        comparison: one row per head with at least ``head`` and ``cv_mean``; ``verdict`` and the
            interval columns when compare wrote them (a table without verdicts takes the highest
            ``cv_mean`` as best and calls no head tied).

    Returns:
        The :class:`Answer`.

    Raises:
        ValueError: an empty table, or one without ``head`` and ``cv_mean``.
    """
    if comparison is None or not len(comparison):
        raise ValueError("the comparison table is empty; run make compare first")
    missing = [c for c in ("head", "cv_mean") if c not in comparison.columns]
    if missing:
        raise ValueError(f"the comparison table lacks the column(s) {', '.join(missing)}; it must be "
                         f"the comparison.csv that make compare writes; received columns "
                         f"{', '.join(map(str, comparison.columns))}")
    rows = [row for _, row in comparison.iterrows()]
    if "verdict" in comparison.columns and (comparison["verdict"] == "best").sum() == 1:
        best_row = next(r for r in rows if r["verdict"] == "best")
    else:  # no verdicts: the rule the verdicts use, with the first head on an exact tie
        best_row = rows[int(comparison["cv_mean"].astype(float).reset_index(drop=True).idxmax())]
    best = dataclasses.replace(_head_score(best_row), verdict="best")
    others = [_head_score(r) for r in rows if str(r["head"]) != best.head]
    others = [h if h.verdict in ("tied", "worse") else dataclasses.replace(h, verdict="worse")
              for h in others]
    first = rows[0]
    return Answer(best=best,
                  tied=tuple(h for h in others if h.verdict == "tied"),
                  worse=tuple(h for h in others if h.verdict == "worse"),
                  n_eval=int(_float(first, "n_eval", 0)), n_train=int(_float(first, "n_train", 0)))


def read_answer(out_dir) -> Answer:
    """The answer of the run in ``out_dir`` (its ``comparison.csv``).

    Raises:
        FileNotFoundError: ``out_dir`` has no comparison.csv (say: run make compare first).
        ValueError: the table is empty or not compare's.
    """
    path = Path(out_dir) / "comparison.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run make compare first (OUT={out_dir})")
    return answer_of(pd.read_csv(path))


def compact_table(answer: Answer, width: int = WIDTH) -> str:
    """The console table: one line per head, best first and marked with ``*``.

    Columns: head, accuracy on the evaluated images with its 95% interval, the cross-validated
    balanced accuracy (mean and standard deviation over the folds), and the verdict. The full
    table (p values included) is comparison.csv. Head names longer than the column are cut with
    an ellipsis so the table never exceeds ``width`` columns.
    """
    name_w = max(4, min(16, max(len(h.head) for h in answer.ranked)))
    header = (f"  {'head':<{name_w}}  {'accuracy (95% CI)':<22}  {'CV bal. acc. (sd)':<17}  verdict")
    lines = [header]
    for h in answer.ranked:
        mark = "*" if h.verdict == "best" else " "
        name = h.head if len(h.head) <= name_w else h.head[:name_w - 1] + "…"
        acc = f"{h.accuracy:.3f} {_interval(h.accuracy_ci)}"
        cv = f"{h.cv_mean:.3f} ({h.cv_std:.3f})"
        lines.append(f"{mark} {name:<{name_w}}  {acc:<22}  {cv:<17}  {h.verdict}")
    return "\n".join(line[:width] for line in lines)
