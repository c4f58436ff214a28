"""One whole run in OUT: stage 2 writes into a temporary folder and swaps it into place.

A crash (or Ctrl-C) in the middle of ``make compare`` then leaves the previous run untouched,
never a new ``split.csv`` beside the previous run's models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .data import DataError

# What one run of `make compare` writes, or what is derived from one run (report, predictions of
# its models). Everything else in OUT (the duplicate cache, the report's thumbnails, the audit,
# files of the user's) is carried over into the new run.
RUN_OUTPUTS = frozenset({
    "comparison.csv", "predictions.csv", "split.csv", "run.json", "reports", "models", "figures",
    "report.html", "new_predictions.csv", "predict.csv", "backbones.csv", "cv_scores.csv", "learning_curve.csv", "tuning.csv",
})


def check_out_dir(out_dir) -> Path:
    """Refuses an OUT that must not be replaced as a whole: the working folder, a folder above
    it, the home folder or the file-system root, or a file.

    Raises:
        DataError: naming OUT and what to use instead.
    """
    out = Path(out_dir)
    full = out.resolve()
    cwd = Path.cwd().resolve()
    if full == Path(full.anchor) or full == Path.home().resolve() or cwd.is_relative_to(full):
        raise DataError(f"OUT={out_dir} is the working folder, a folder above it, the home folder or "
                        "the root; make compare replaces OUT as a whole with each run, so OUT must "
                        "be a folder of its own: pass OUT=out (or another new folder)")
    if out.exists() and not out.is_dir():
        raise DataError(f"OUT={out_dir} is a file, not a folder; pass another OUT")
    return out


@contextlib.contextmanager
def new_run(out_dir):
    """Yields an empty temporary folder beside OUT; on success it becomes OUT.

    On an exception the temporary folder is deleted and OUT is left as it was.
    """
    out = check_out_dir(out_dir)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{out.name}.old-*"):  # a swap that was interrupted at its end
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> None:
    """Makes ``tmp`` the new OUT, carrying over what is not a run output (see RUN_OUTPUTS).

    Two renames on the same file system: OUT holds the previous run until the first and the new
    one after the second.
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    for entry in out.iterdir():
        if entry.name not in RUN_OUTPUTS and not (tmp / entry.name).exists():
            os.replace(entry, tmp / entry.name)
    old = out.resolve().parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
