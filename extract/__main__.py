"""Command line of stage 1: ``python -m extract --in IN --features FEATURES ...``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .backbones import BACKBONES, parse_list
from .load import DEFAULT_MAX_PIXELS
from .atomic import CacheWriteError
from .framework import BACKENDS, check, default_backend
from .model import Settings, WeightsUnavailable


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__)
    p.add_argument("--in", dest="in_dir", default="in", help="input folder (IN)")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    p.add_argument("--dataset", default="", help="name of the input's folder under FEATURES "
                   "(DATASET; default: the input folder's name and a hash of its path)")
    p.add_argument("--backbone", default="vgg16", help=f"one of {', '.join(BACKBONES)} (BACKBONE)")
    p.add_argument("--backbones", default="",
                   help="several backbones, comma-separated: one pass each, each its own key "
                        "(BACKBONES; overrides --backbone)")
    p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file (WEIGHTS)")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (SIZE; default: each backbone's own input size)")
    p.add_argument("--layer", default="",
                   help="pool this intermediate layer instead of the last block (LAYER)")
    p.add_argument("--pooling", default="avg", help="avg or max (POOLING)")
    p.add_argument("--batch", type=int, default=32, help="images per model call (BATCH)")
    p.add_argument("--backend", default=None, choices=list(BACKENDS),
                   help="the Keras backend that runs the model, on its GPU when it sees one: "
                        "tensorflow, jax or torch (BACKEND; default KERAS_BACKEND, else tensorflow)")
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
    p.add_argument("--decoders", default="auto", type=_decoders,
                   help="processes that decode images: a number (0: threads of this process), or "
                        "auto: one per core but two when an NVIDIA GPU is present and there are "
                        "at least 4 cores, else 0 (DECODERS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--flush-seconds", type=float, default=2.0,
                   help="write finished batches for resume at least this often (seconds)")
    return p.parse_args(argv)


def _decoders(text: str) -> int | None:
    """``--decoders``: auto (None) or a whole number >= 0."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"DECODERS must be auto or a whole number >= 0; received {text!r}")
    return value


def main(argv=None) -> int:
    """Runs ``extract_features`` once per backbone; returns the exit code (0, 1, 2 or 130)."""
    args = parse(argv)
    try:
        names = parse_list(args.backbones) if args.backbones else [args.backbone]
        backend = check(args.backend or default_backend())
        all_settings = [_checked(Settings(name, args.weights, args.size, args.pooling,
                                          args.precision, args.layer or None, backend))
                        for name in names]
    except (ValueError, WeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    worst = 0
    for settings in all_settings:
        if len(all_settings) > 1:
            print(f"== {settings.backbone}: {settings.key}", flush=True)
        code = extract_one(settings, args)
        if code in (2, 130):
            return code
        worst = max(worst, code)
    return worst


def _checked(settings: Settings) -> Settings:
    """Returns ``settings`` after checking them; PRECISION=auto is resolved later, by
    ``extract_features``, so the other fields are checked with fp32 in its place."""
    if settings.precision == "auto":
        dataclasses.replace(settings, precision="fp32").check()
        return settings
    return settings.check()


def _demo_fallback(settings: Settings) -> tuple[Settings, dict]:
    """(demo only) Random weights, with a banner and a ``meta.json`` note, when the ImageNet
    weights of ``settings`` can be neither found nor downloaded; else ``settings`` unchanged."""
    from .model import build, keras_cache_file

    if settings.weights != "imagenet" or keras_cache_file(settings.backbone).is_file():
        return settings, {}
    try:
        build(dataclasses.replace(settings, precision="fp32")
              if settings.precision == "auto" else settings)  # tries Keras' download once
        return settings, {}
    except WeightsUnavailable as err:
        print("=" * 78, file=sys.stderr)
        print("DEMO: ImageNet weights cannot be had here, so the demo uses RANDOM "
              "weights (WEIGHTS=none).\nThe numbers show the pipeline works; they "
              "say little about ImageNet features.\n" + str(err), file=sys.stderr)
        print("=" * 78, file=sys.stderr)
        return (dataclasses.replace(settings, weights="none"),
                {"weights_fallback": "imagenet unavailable; random weights used"})


def extract_one(settings: Settings, args: argparse.Namespace) -> int:
    """One pass of ``extract_features`` for one backbone; prints its closing line.

    Returns:
        The exit code: 0, 1 (STRICT and rejections), 2 (usage or weights) or 130 (Ctrl-C).
    """
    from .compute import Interrupted
    from .run import extract_features

    try:
        extra = {}
        if args.weights_fallback:
            settings, extra = _demo_fallback(settings)
        summary = extract_features(args.in_dir, args.features, settings, batch=args.batch,
                                   max_pixels=args.max_pixels, progress=not args.quiet,
                                   extra_meta=extra, flush_seconds=args.flush_seconds,
                                   dataset=args.dataset or None, engine=args.engine,
                                   actors=args.actors or None, decoders=args.decoders)
    except (WeightsUnavailable, FileNotFoundError, ValueError, CacheWriteError) as err:
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
