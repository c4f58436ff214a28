"""Command line of stage 2: ``python -m classify compare|... [options]``."""

from __future__ import annotations

import argparse
import sys

from .cli import add_features_args, add_heads_args, settings_from


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify", description="Stage 2 on cached embeddings.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="train, cross-validate and compare the heads")
    add_features_args(c)
    add_heads_args(c)
    c.add_argument("--groups", choices=["none", "dups"], default="none",
                   help="dups: keep each duplicate cluster on one side of every split (GROUPS)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from .data import DataError

    try:
        if args.command == "compare":
            from .compare import compare, format_table

            table = compare(args.features, settings_from(args), args.out, heads=args.heads,
                            seed=args.seed, test_size=args.test_size, folds=args.folds,
                            jobs=args.jobs or None, in_dir=args.in_dir,
                            fallback_none=args.weights_fallback == "none",
                            groups=args.groups, dup_threshold=args.dup_threshold,
                            memory_gb=args.memory_gb)
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
