"""The section the page opens on: the answer (from :mod:`classify.answer`) and what could mislead."""

from __future__ import annotations

import math

from extract.notices import class_counts_line, plural, random_weights_banner, split_like_warning
from .markup import esc

MIN_EVAL = 50  # fewer evaluated images: the accuracy interval is too wide to rank heads by
MIN_TRAIN_PER_CLASS = 10  # fewer training images in a class: its scores are anecdotes


def _interval(ci) -> str:
    low, high = ci
    return f"[{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else "[interval n/a]"


def answer_html(answer) -> str:
    """The best head, its two scores with their intervals, and who is tied with it."""
    if answer is None:
        return ('<p class="warn"><code>comparison.csv</code> is missing or not compare\'s: there is no '
                "answer yet; run <code>make compare</code>.</p>")
    b = answer.best
    lines = [f'<p class="headline">Best head: <strong>{esc(b.head)}</strong>, cross-validated balanced '
             f"accuracy <strong>{b.cv_mean:.3f}</strong> {_interval(b.cv_ci)}; accuracy on the "
             f"{answer.n_eval:,} evaluated images {b.accuracy:.3f} {_interval(b.accuracy_ci)} "
             "(95% intervals).</p>"]
    if answer.tied:
        names = ", ".join(f"<strong>{esc(h.head)}</strong>" for h in answer.tied)
        lines.append(f"<p>Tied with it: {names}: the difference is within what other folds could give, "
                     "so either is as good an answer.</p>")
    elif answer.worse:
        lines.append("<p>Every other head is worse (paired test on the same folds, Holm-adjusted "
                     "p &lt; 0.05).</p>")
    if answer.worse and answer.tied:
        lines.append("<p>Worse: " + ", ".join(esc(h.head) for h in answer.worse) + ".</p>")
    lines.append('<p class="note">The best head is the one with the highest cross-validated balanced '
                 "accuracy" + (f"; its settings: <code>{esc(b.params)}</code>" if b.params else "") + ".</p>")
    return '<div class="answer-card">' + "".join(lines) + "</div>"


def warnings_of(answer, run: dict, weights, counts: dict, train_counts: dict) -> list[tuple[str, str]]:
    """(css class, text) of every warning that applies: random weights, copies across the split,
    too few images, split-like class names, label conflicts, classes without evaluated images."""
    found = []
    banner = random_weights_banner(weights, run.get("weights_fallback"))
    if banner:
        found.append(("banner", banner))
    copies = int((run.get("duplicates") or {}).get("eval_with_train_duplicate") or 0)
    if copies and answer is not None:
        found.append(("", f"{plural(copies, 'evaluated image')} of {answer.n_eval:,} "
                          f"{'has' if copies == 1 else 'have'} a copy or near-copy among the training "
                          "images, so the accuracy counts images the heads have as good as seen; "
                          "accuracy_no_dups (in the full table) leaves them out, and make audit lists them."))
    if answer is not None and 0 < answer.n_eval < MIN_EVAL:
        found.append(("", f"Only {plural(answer.n_eval, 'evaluated image')}: the best head's accuracy "
                          f"interval is {_interval(answer.best.accuracy_ci)}, and heads closer than that "
                          "cannot be told apart. More evaluated images (a bigger test/ folder, or "
                          "TEST_SIZE) narrow it."))
    few = {c: n for c, n in train_counts.items() if n < MIN_TRAIN_PER_CLASS}
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(few.items(), key=lambda kv: kv[1])[:6])
        found.append(("", f"Fewer than {MIN_TRAIN_PER_CLASS} training images in {plural(len(few), 'class', 'classes')}: "
                          f"{listed}; their scores rest on a handful of images."))
    split_like = split_like_warning(counts)
    if split_like:
        found.append(("", split_like.removeprefix("warning: ")))
    conflicts = run.get("label_conflicts")
    if isinstance(conflicts, list) and conflicts:
        found.append(("", f"{plural(len(conflicts), 'file')} {'is' if len(conflicts) == 1 else 'are'} filed "
                          "under more than one label (the same content); at most one label is right "
                          "(listed under The data)."))
    missing = run.get("classes_not_measured") or []
    if missing:
        found.append(("", f"No evaluated image of {', '.join(map(str, missing))}: the scores say nothing "
                          "about recognising it."))
    return found


def section_answer(answer, run: dict, weights, counts: dict, train_counts: dict) -> str:
    """The answer card, the warnings, and the classes with their counts."""
    parts = [answer_html(answer)]
    found = warnings_of(answer, run, weights, counts, train_counts)
    if found:
        parts.append('<ul class="warnings" role="alert">' + "".join(
            f'<li class="{cls}">{esc(text)}</li>' for cls, text in found) + "</ul>")
    if counts:
        parts.append(f'<p class="note">{esc(class_counts_line(counts))}</p>')
    return "".join(parts)
