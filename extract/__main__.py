"""Command line of stage 1: ``python -m extract --in IN --features FEATURES ...``."""

from __future__ import annotations

import argparse
import sys

from .load import DEFAULT_MAX_PIXELS
from .cache import CacheWriteError
from .model import Settings, WeightsUnavailable


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__)
    p.add_argument("--in", dest="in_dir", default="in", help="input folder (IN)")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    p.add_argument("--dataset", default="", help="name of the input's folder under FEATURES "
                   "(DATASET; default: the input folder's name and a hash of its path)")
    p.add_argument("--backbone", default="vgg16", help="BACKBONE")
    p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file (WEIGHTS)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (SIZE)")
    p.add_argument("--pooling", default="avg", help="avg or max (POOLING)")
    p.add_argument("--batch", type=int, default=32, help="images per model call (BATCH)")
    p.add_argument("--precision", default="fp32",
                   help="fp32, bf16, fp16, or auto: the fastest that agrees with fp32 here (PRECISION)")
    p.add_argument("--strict", type=int, default=0, help="1: exit non-zero when any file is rejected (STRICT)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are rejected (MAX_PIXELS)")
    p.add_argument("--weights-fallback", choices=["none"], default=None,
                   help="(demo only) use random weights when ImageNet weights cannot be had")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a Ray Data pipeline, RAY_ADDRESS selects a cluster (ENGINE)")
    p.add_argument("--actors", type=int, default=0,
                   help="(ENGINE=ray) model actors; 0: one per GPU, else one per node")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--flush-seconds", type=float, default=2.0,
                   help="write finished batches for resume at least this often (seconds)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from .run import Interrupted, extract_features

    settings = Settings(args.backbone, args.weights, args.size, args.pooling, args.precision)
    extra = {}
    try:
        import dataclasses

        if settings.precision == "auto":  # resolved by extract_features; check the rest now
            dataclasses.replace(settings, precision="fp32").check()
        else:
            settings.check()
        if args.weights_fallback and settings.weights == "imagenet":
            from .model import keras_cache_file

            if not keras_cache_file(settings.backbone).is_file():
                try:
                    from .model import build

                    build(dataclasses.replace(settings, precision="fp32")
                          if settings.precision == "auto" else settings)  # tries Keras' download once
                except WeightsUnavailable as err:
                    print("=" * 78, file=sys.stderr)
                    print("DEMO: ImageNet weights cannot be had here, so the demo uses RANDOM "
                          "weights (WEIGHTS=none).\nThe numbers show the pipeline works; they "
                          "say little about ImageNet features.\n" + str(err), file=sys.stderr)
                    print("=" * 78, file=sys.stderr)
                    settings = Settings(args.backbone, "none", args.size, args.pooling, args.precision)
                    extra = {"weights_fallback": "imagenet unavailable; random weights used"}
        summary = extract_features(args.in_dir, args.features, settings, batch=args.batch,
                                   max_pixels=args.max_pixels, progress=not args.quiet,
                                   extra_meta=extra, flush_seconds=args.flush_seconds,
                                   dataset=args.dataset or None, engine=args.engine,
                                   actors=args.actors or None)
    except WeightsUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, CacheWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    print(summary.line())
    if args.strict and summary.rejected:
        print(f"error: STRICT=1 and {summary.rejected} files were rejected; see "
              f"{summary.folder}/rejected.csv", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
