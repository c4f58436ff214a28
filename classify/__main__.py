"""Command line of stage 2: ``python -m classify compare|... [options]``."""

from __future__ import annotations

import argparse
import sys


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="in_dir", default="in", help="input folder (IN), for hints")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    p.add_argument("--out", default="out", help="output folder (OUT)")
    p.add_argument("--backbone", default="vgg16", help="BACKBONE")
    p.add_argument("--weights", default="imagenet", help="WEIGHTS")
    p.add_argument("--size", type=int, default=224, help="SIZE")
    p.add_argument("--pooling", default="avg", help="POOLING")
    p.add_argument("--precision", default="fp32", help="PRECISION")
    p.add_argument("--weights-fallback", choices=["none"], default=None,
                   help="(demo only) use the random-weights cache when the ImageNet one is missing")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify", description="Stage 2 on cached embeddings.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="train, cross-validate and compare the heads")
    _common(c)
    c.add_argument("--heads", default="logreg,svm,mlp", help="HEADS")
    c.add_argument("--seed", type=int, default=42, help="SEED")
    c.add_argument("--test-size", type=float, default=0.2, help="TEST_SIZE")
    c.add_argument("--folds", type=int, default=5, help="FOLDS")
    c.add_argument("--jobs", type=int, default=0, help="parallel workers, 0 = every core (JOBS)")
    c.add_argument("--groups", choices=["none", "dups"], default="none",
                   help="dups: keep each duplicate cluster on one side of every split (GROUPS)")
    c.add_argument("--dup-threshold", default="auto",
                   help="cosine similarity for near-duplicates, or auto (DUP_THRESHOLD)")
    return p.parse_args(argv)


def _settings(args):
    from extract.model import Settings

    return Settings(args.backbone, args.weights, args.size, args.pooling, args.precision)


def main(argv=None) -> int:
    args = parse(argv)
    from .data import DataError

    try:
        if args.command == "compare":
            from .compare import compare, format_table

            table = compare(args.features, _settings(args), args.out, heads=args.heads,
                            seed=args.seed, test_size=args.test_size, folds=args.folds,
                            jobs=args.jobs or None, in_dir=args.in_dir,
                            fallback_none=args.weights_fallback == "none",
                            groups=args.groups, dup_threshold=args.dup_threshold)
            print()
            print(format_table(table))
            print(f"\noutputs in {args.out}/: comparison.csv, predictions.csv, reports/, models/, "
                  "figures/, run.json")
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
