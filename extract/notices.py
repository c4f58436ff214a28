"""What every command says before its numbers: the classes, and what could mislead.

``make features``, ``make compare``, ``make audit``, ``make predict`` and ``make report`` each
print the classes with their image counts, warn when a class name looks like the name of a split (``training/`` and
``testing/`` become two classes, not a split layout), and print a one-line banner when the
features come from random weights (``WEIGHTS=none``, or the demo's fallback), whose scores show
that the pipeline works, not how good pretrained features are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Folder names that mean a split, beyond those the input layout takes as splits
# (extract.files.SPLIT_NAMES): a class folder of one of these names is almost always a split
# folder under a name the layout does not recognise, or a split folder beside class folders.
SPLIT_LIKE = ("train", "training", "test", "testing", "val", "valid", "validation", "dev",
              "eval", "evaluation", "holdout", "hold-out", "trainval", "tune", "tuning")
SHOWN_CLASSES = 12  # more classes are summarised as "... and N more"


def class_counts_line(counts: Mapping[str, int]) -> str:
    """``classes (2): bees 153, ants 124`` in the order given (callers sort), at most
    :data:`SHOWN_CLASSES` named."""
    items = list(counts.items())
    shown = ", ".join(f"{name} {int(n):,}" for name, n in items[:SHOWN_CLASSES])
    more = f", ... and {len(items) - SHOWN_CLASSES} more" if len(items) > SHOWN_CLASSES else ""
    return f"classes ({len(items)}): {shown}{more}"


def split_like(class_names: Iterable[str]) -> list[str]:
    """The class names that look like split names (case and surrounding spaces ignored)."""
    return [c for c in class_names if str(c).strip().lower() in SPLIT_LIKE]


def split_like_warning(class_names: Iterable[str]) -> str | None:
    """A warning naming the class folders that look like splits, with what to do; None if none."""
    names = split_like(class_names)
    if not names:
        return None
    listed = [f"{n}/" for n in names]
    folders = " and ".join(listed) if len(listed) <= 2 else ", ".join(listed[:-1]) + " and " + listed[-1]
    what = (f"the class folder {folders} looks like a split name, but it is used as a class"
            if len(names) == 1 else
            f"the class folders {folders} look like split names, but they are used as classes")
    return (f"warning: {what}. If they are splits, name the top-level folders train/, test/ "
            "(and valid/ or val/), each holding one folder per class, and run make features "
            "again; if they really are classes, ignore this.")


def random_weights_banner(weights, fallback=None) -> str | None:
    """One line that says the features come from random weights; None for pretrained ones.

    Args:
        weights: the extraction's ``weights`` (``imagenet``, ``none`` or a file path), as
            meta.json or run.json record it.
        fallback: meta.json's ``weights_fallback`` (the demo's note when it fell back).
    """
    if str(weights) != "none" and not fallback:
        return None
    why = " (ImageNet weights could not be had, so the demo fell back)" if fallback else ""
    return ("RANDOM WEIGHTS: these features come from a randomly initialised network "
            f"(WEIGHTS=none){why}; the scores show the pipeline works, not how good pretrained "
            "features are.")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 duplicate pair``, ``2 duplicate pairs``: a count with its noun in the right number."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
