"""Command line of the report: ``python -m classify.report [--out OUT] [--in IN] ...``."""

from __future__ import annotations

import argparse
import sys

from ..data import DataError
from .build import build_report
from .embedding import MAX_TSNE
from .gallery import MAX_GALLERY

# flags that, when given, are checked against the run's settings (None: not given, the run's)
SETTING_FLAGS = [("--dataset", "dataset", str), ("--backbone", "backbone", str), ("--weights", "weights", str),
                 ("--size", "size", int), ("--pooling", "pooling", str), ("--precision", "precision", str),
                 ("--layer", "layer", str)]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify.report",
                                description="Write OUT/report.html, one self-contained page of the experiment. "
                                            "IN, FEATURES and the extraction settings default to the run's "
                                            "(OUT/run.json); given ones must agree with it.")
    p.add_argument("--out", default="out", help="stage 2 outputs (OUT)")
    p.add_argument("--in", dest="in_dir", default=None, help="the images (IN), for thumbnails; default: the run's")
    p.add_argument("--features", default=None, help="cache root (FEATURES); default: the run's")
    for flag, dest, kind in SETTING_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=None,
                       help=f"{dest.upper()}: checked against the run's; default: the run's")
    p.add_argument("--max-gallery", type=int, default=MAX_GALLERY, help="most misclassified images shown")
    p.add_argument("--max-tsne", type=int, default=MAX_TSNE, help="most vectors given to t-SNE")
    return p.parse_args(argv)


def print_notices(out_dir) -> None:
    """The classes with their counts, the split-like-name warning and the random-weights banner."""
    from ..remembered import class_counts, notices, read_run

    run = read_run(out_dir) or {}
    weights = (run.get("extraction") or {}).get("weights")
    for line in notices(class_counts(out_dir), weights, run.get("weights_fallback")):
        print(line)


def main(argv=None) -> int:
    args = parse(argv)
    given = {dest: getattr(args, dest) for _, dest, _ in SETTING_FLAGS}
    print_notices(args.out)
    try:
        path = build_report(args.in_dir, args.features, args.out, args.max_gallery, args.max_tsne,
                            given=given, log=print)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
