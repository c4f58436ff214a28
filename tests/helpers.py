"""Helpers shared by the test modules (imported as ``from helpers import ...``; test modules never
import one another). Fixtures and the image makers live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from extract import Settings, extract_features
from extract.cache import write_cache

# The settings of the tests: random-init weights (no download), tiny images.
S32 = Settings(weights="none", size=32)
S64 = Settings(weights="none", size=64)

# Stage 2 without nested tuning and with one round of cross-validation: what a test not about
# tuning or repeats passes to compare() (a 32 x 512 cache: about 2.7 s instead of 38.6 s).
FAST = {"tune": "0", "repeats": 1}


def quiet(*_args, **_kw):
    """A ``log`` that says nothing."""


def extract_quietly(in_dir, features, settings=S64, **kw):
    """Stage 1 on ``in_dir`` into ``features``, without progress bar or log lines."""
    return extract_features(in_dir, features, settings, progress=False, log=quiet, **kw)


def fake_cache(folder, labels, shas=None, splits=None, X=None, dim: int = 16, seed: int = 0):
    """Writes a cache of ``labels`` (one row each) with separable random embeddings, as the
    input ``DATASET=fake`` under the cache root ``folder``.

    Returns:
        ``(X, rows)``: the embeddings written and the manifest rows.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    if X is None:
        centres = rng.normal(0, 3, (len(classes), dim))
        X = np.stack([centres[classes.index(lab)] + rng.normal(0, 1, dim) for lab in labels])
    shas = shas or [f"{i:064x}" for i in range(len(labels))]
    splits = splits or [""] * len(labels)
    rows = [{"path": f"{sp + '/' if sp else ''}{lab}/{i:03d}.png", "label": lab, "split": sp,
             "sha256": sha, "size": 1, "mtime_ns": 1}
            for i, (lab, sha, sp) in enumerate(zip(labels, shas, splits))]
    X = np.asarray(X, np.float32)
    # an exact copy has the exact embedding of its original
    first = {}
    for i, sha in enumerate(shas):
        X[i] = X[first.setdefault(sha, i)]
    write_cache(Path(folder) / "fake", S64.key, X, rows, {"dim": X.shape[1], "backbone": "vgg16", "weights": "none",
                                           "image_size": 64, "pooling": "avg", "precision": "fp32",
                                           "key": S64.key}, [])
    return X, rows


def run_compare(features, out, **kw):
    """``compare`` on the single cache under ``features``: by default 3 folds, one job, quiet,
    and :data:`FAST` (no tuning, one round of cross-validation) unless ``tune``/``repeats`` are
    given."""
    from classify import compare

    from conftest import only_cache

    for name, value in FAST.items():
        kw.setdefault(name, value)
    kw.setdefault("folds", 3)
    kw.setdefault("jobs", 1)
    kw.setdefault("log", quiet)
    for name, value in only_cache(features).items():
        kw.setdefault(name, value)
    return compare(features, S64, out, **kw)


def run_main(module: str, *args):
    """``python -m <module> <args>`` in this process: the command's ``main(argv)``, its printed
    output captured. Returns a :class:`subprocess.CompletedProcess` as :func:`conftest.run_cli`
    does (argparse's refusals included, exit status 2). For tests about what a command does, not
    about its process (what it imports, signals, the environment it starts with)."""
    import contextlib
    import importlib
    import io
    import subprocess

    main = getattr(importlib.import_module(module), "main", None)  # classify.report, classify.audit...
    if main is None:  # classify, extract: their __main__ only defines it
        main = importlib.import_module(f"{module}.__main__").main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # as Python ends a process: None is 0, a message goes to stderr as 1
            code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else 1
            if not isinstance(exit_.code, int) and exit_.code is not None:
                err.write(f"{exit_.code}\n")
    return subprocess.CompletedProcess([module, *argv], code or 0, out.getvalue(), err.getvalue())
