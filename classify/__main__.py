"""Command line of stage 2: ``python -m classify compare|... [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import add_features_args, add_heads_args, engine, settings_from


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify", description="Stage 2 on cached embeddings.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="train, cross-validate and compare the heads")
    add_features_args(c)
    add_heads_args(c)
    c.set_defaults(test_size=None)  # not given: 0.2 without split folders; given beside them: refused
    c.add_argument("--groups", choices=["none", "dups"], default="none",
                   help="dups: keep each duplicate cluster on one side of every split (GROUPS)")
    c.add_argument("--tune", default="auto", choices=["auto", "1", "0"],
                   help="search each head's settings: on the validation folder beside test/, else by "
                        "nested inner CV; auto: up to 20,000 training images; 0: fixed settings (TUNE)")
    c.add_argument("--normalize", default="none", choices=["none", "l2"],
                   help="l2: every head sees the vectors scaled to length 1 (NORMALIZE)")
    c.add_argument("--shots", default="",
                   help="few-shot curves: comma-separated training images per class, e.g. 1,2,4,8,16; "
                        "empty: none (SHOTS)")
    c.add_argument("--shot-draws", default="5", help="draws per few-shot k (SHOT_DRAWS)")
    c.add_argument("--backbones", default="",
                   help="compare every head on each of these comma-separated backbones: "
                        "OUT/backbones.csv, OUT/<backbone>/ (BACKBONES; overrides --backbone)")
    return p.parse_args(argv)


def compare_matrix(args: argparse.Namespace) -> int:
    """``compare --backbones a,b``: every head on every backbone; prints the matrix."""
    from extract.backbones import parse_list

    from .compare import format_table
    from .matrix import compare_backbones, settings_for

    settings_list = settings_for(parse_list(args.backbones), args.weights, args.size, args.pooling,
                                 args.precision, args.layer or None, args.features)
    with engine(args.engine):
        matrix = compare_backbones(args.features, settings_list, args.out, in_dir=args.in_dir,
                                   fallback_none=args.weights_fallback == "none",
                                   dataset=args.dataset or None, heads=args.heads, seed=args.seed,
                                   test_size=args.test_size, folds=args.folds,
                                   jobs=args.jobs or None, groups=args.groups,
                                   dup_threshold=args.dup_threshold, repeats=args.repeats,
                                   memory_gb=args.memory_gb, tune=args.tune, stale=args.stale,
                                   normalize=args.normalize, shots=args.shots, shot_draws=args.shot_draws)
    print()
    print(format_table(matrix.drop(columns=["features_key"])))
    print(f"\noutputs in {args.out}/: backbones.csv, backbones.png, <backbone>/ for each backbone; "
          "the rest is a copy of the best backbone's outputs")
    return 0


def console_answer(table) -> str:
    """What compare prints last: the headline (best head, tied heads, scores with 95%
    intervals) and the compact table, best first and marked, within 100 columns; the full table
    is comparison.csv."""
    import textwrap

    from .answer import WIDTH, answer_of, compact_table

    answer = answer_of(table)
    return (f"{textwrap.fill(answer.headline(), WIDTH)}\n\n{compact_table(answer)}\n"
            "(* best; every column, p values and timings: comparison.csv)")


def main(argv=None) -> int:
    args = parse(argv)
    from .data import DataError

    try:
        if args.command == "compare" and args.backbones:
            return compare_matrix(args)
        if args.command == "compare":
            from .compare import compare

            with engine(args.engine):
                table = compare(args.features, settings_from(args), args.out, heads=args.heads,
                                seed=args.seed, test_size=args.test_size, folds=args.folds,
                                jobs=args.jobs or None, in_dir=args.in_dir,
                                fallback_none=args.weights_fallback == "none",
                                groups=args.groups, dup_threshold=args.dup_threshold,
                                dataset=args.dataset or None, repeats=args.repeats,
                                memory_gb=args.memory_gb, tune=args.tune, stale=args.stale,
                                normalize=args.normalize, shots=args.shots, shot_draws=args.shot_draws)
            print()
            print(console_answer(table))
            print(f"\noutputs in {args.out}/: comparison.csv, predictions.csv, reports/, models/, "
                  "figures/, run.json" + "".join(f", {f}" for f in ("tuning.csv", "fewshot.csv")
                                                 if (Path(args.out) / f).is_file()))
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
