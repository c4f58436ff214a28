"""The settings of the run in OUT, remembered by the commands that read it.

``make report``, ``make audit`` and ``make predict`` take IN, FEATURES, DATASET and the extraction
settings (BACKBONE, WEIGHTS, SIZE, POOLING, PRECISION, LAYER) from ``OUT/run.json`` and the
cache's ``meta.json`` it names, so ``make report OUT=<out>`` needs nothing else. The Makefile
passes a variable to these commands only when the user set it, so a flag that is absent here means
"not given", never "the default".

A value that is given must agree with the run: the outputs in OUT were made from the run's
images, cache and settings, so one that names another is refused with both values named. A
folder the run recorded that is no longer there gives way to the one given (the images or the
cache were moved). The audit's own settings (HEADS, SEED, TEST_SIZE, FOLDS) are softer: a given
one wins, and the audit says that its scores then differ from compare's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

from .data import DataError

# field -> the Make variable the user writes
VARIABLES = {"in_dir": "IN", "features": "FEATURES", "dataset": "DATASET", "backbone": "BACKBONE",
             "weights": "WEIGHTS", "size": "SIZE", "pooling": "POOLING", "precision": "PRECISION",
             "layer": "LAYER"}
PATH_FIELDS = ("in_dir", "features")
SOFT = {"heads": "HEADS", "seed": "SEED", "test_size": "TEST_SIZE", "folds": "FOLDS"}
# the defaults of the Makefile and of the flags, used when neither the user nor the run says
DEFAULTS = {"in_dir": "in", "features": "features", "dataset": None, "backbone": "vgg16",
            "weights": "imagenet", "size": None, "pooling": "avg", "precision": "fp32", "layer": None,
            "heads": "logreg,svm,mlp", "seed": 42, "test_size": 0.2, "folds": 5}


def read_json(path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_run(out_dir) -> dict | None:
    """``OUT/run.json`` as a dict; None when there is none (no ``make compare`` in OUT yet)."""
    return read_json(Path(out_dir) / "run.json")


def _cache_meta(run: dict) -> dict:
    folder = run.get("features_folder")
    return (read_json(Path(folder) / "meta.json") or {}) if folder else {}


def recorded(run: dict) -> dict:
    """What ``run.json`` (and the meta.json of the cache it names) says of each field.

    Returns:
        {field: value} for the fields the run knows; ``dataset`` is the name of the input's folder
        under FEATURES (``in-3fa2c1d0``, or a ``DATASET``).
    """
    ext = run.get("extraction") or {}
    meta = _cache_meta(run)
    imported = (ext.get("backbone") or meta.get("backbone")) == "imported"
    folder = Path(run["features_folder"]) if run.get("features_folder") else None
    found = {
        "in_dir": run.get("input") or (None if imported else meta.get("input")),
        "features": run.get("features") or (str(folder.parent.parent) if folder else None),
        "dataset": run.get("dataset") or (folder.parent.name if folder else None),
        "backbone": ext.get("backbone"), "weights": ext.get("weights"), "size": ext.get("image_size"),
        "pooling": ext.get("pooling"), "precision": ext.get("precision"), "layer": ext.get("layer") or "",
        "heads": ",".join(run["heads"]) if isinstance(run.get("heads"), list) else run.get("heads"),
        "seed": run.get("seed"), "test_size": run.get("test_size"), "folds": run.get("folds"),
    }
    if imported:  # an import has no image settings to agree with, only its DATASET
        found.update(size=None, pooling=None, precision=None, layer=None)
    return {k: v for k, v in found.items() if v is not None}


def agrees(field: str, given, run_value) -> bool:
    """Whether a given value means the same as the run's (paths resolved, sizes as numbers,
    ``PRECISION=auto`` agreeing with any, backbone names in any case)."""
    if field in PATH_FIELDS:
        return os.path.realpath(str(given)) == os.path.realpath(str(run_value))
    if field == "size":
        try:
            return int(given) == int(run_value)
        except (TypeError, ValueError):
            return False
    if field == "precision" and str(given) == "auto":  # auto was resolved when the cache was made
        return True
    if field == "weights" and str(given) not in ("imagenet", "none"):
        return os.path.realpath(str(given)) == os.path.realpath(str(run_value))
    if field == "backbone":
        return str(given).lower() == str(run_value).lower()
    return str(given or "") == str(run_value or "")


@dataclasses.dataclass
class RunInputs:
    """What a command reading OUT uses: each field's value and where it came from."""

    out: Path
    run: dict  # OUT/run.json, {} when OUT holds no compare run
    values: dict  # field -> the value to use
    taken: list  # the Make variables taken from the run (not given, recorded by the run)
    notes: list  # a recorded folder that is gone, replaced by the given one
    differs: list  # soft fields given with another value than the run's: (VARIABLE, given, run's)

    def __getitem__(self, field: str):
        return self.values[field]

    @property
    def dataset_arg(self) -> str | None:
        """``DATASET`` for :func:`classify.data.load_features`: None when IN's own name finds it."""
        from extract.cache import input_id

        name = self.values.get("dataset")
        if not name:
            return None
        try:
            return None if input_id(self.values["in_dir"]) == name else name
        except ValueError:
            return name

    @property
    def cache_folder(self) -> Path | None:
        """The run's cache, under FEATURES as given or recorded; None without a run."""
        recorded_folder = self.run.get("features_folder")
        if not recorded_folder:
            return None
        folder = Path(recorded_folder)
        return Path(self.values["features"]) / folder.parent.name / folder.name

    def said(self) -> str | None:
        """One line naming what was taken from the run, or None."""
        if not self.taken:
            return None
        shown = [f"{VARIABLES.get(f, SOFT.get(f))}={self.values[f]}" for f in self.taken
                 if self.values.get(f) not in (None, "") and (f != "dataset" or self.dataset_arg)]
        return f"from {self.out / 'run.json'}: {' '.join(shown)}" if shown else None


def remember(out_dir, given: dict, soft: bool = False) -> RunInputs:
    """Each field's value: the one given, else the run's, else the default.

    Args:
        out_dir: OUT.
        given: {field: value or None} as the flags were given (None or "": not given).
        soft: also remember HEADS, SEED, TEST_SIZE and FOLDS (the audit's), where a given value
            wins and is listed in ``differs``.

    Returns:
        The :class:`RunInputs`.

    Raises:
        DataError: a given value that conflicts with the run, naming both and what to do.
    """
    out = Path(out_dir)
    run = read_run(out) or {}
    rec = recorded(run)
    values, taken, notes, differs, conflicts = {}, [], [], [], []
    for field in list(VARIABLES) + (list(SOFT) if soft else []):
        value, known = given.get(field), rec.get(field)
        if value is None or value == "":
            values[field] = known if known is not None else DEFAULTS[field]
            if known not in (None, ""):
                taken.append(field)
        elif known is None or agrees(field, value, known):
            values[field] = value
        elif field in SOFT:
            values[field] = value
            differs.append((SOFT[field], value, known))
        elif field in PATH_FIELDS and not Path(known).exists():
            values[field] = value
            notes.append(f"note: the run's {VARIABLES[field]}={known} is not there any more; using "
                         f"{VARIABLES[field]}={value}")
        else:
            conflicts.append((VARIABLES[field], value, known))
    if conflicts:
        raise DataError(_conflict_message(out, conflicts))
    return RunInputs(out, run, values, taken, notes, differs)


def _conflict_message(out: Path, conflicts: list) -> str:
    pairs = "; ".join(f"{name}={given} was given, but the run was made with {name}={known or '(empty)'}"
                      for name, given, known in conflicts)
    names = " ".join(name for name, _, _ in conflicts)
    return (f"{pairs} ({out / 'run.json'}). The outputs in OUT={out} come from the run's; leave "
            f"{names} out to use them, or make a run of your own first: make compare "
            f"OUT=<another folder> " + " ".join(f"{n}={g}" for n, g, _ in conflicts))


def class_counts(out_dir) -> dict[str, int]:
    """Images per class of the run in OUT (its ``split.csv``), most first; {} without one."""
    from extract.atomic import read_csv_rows

    try:
        rows = read_csv_rows(Path(out_dir) / "split.csv")
    except (OSError, ValueError, KeyError):
        return {}
    counts = Counter(row.get("label", "") for row in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def notices(counts: dict, weights, fallback=None) -> list[str]:
    """The lines every command reading OUT prints first: the classes with their counts, the
    split-like-name warning and the random-weights banner (those that apply)."""
    from extract.notices import class_counts_line, random_weights_banner, split_like_warning

    lines = [class_counts_line(counts)] if counts else []
    lines += [line for line in (split_like_warning(counts), random_weights_banner(weights, fallback)) if line]
    return lines
