"""Command-line pieces shared by the stage-2 commands (compare, audit)."""

from __future__ import annotations

import argparse
import contextlib


def add_features_args(p: argparse.ArgumentParser) -> None:
    """Adds the flags that locate a cache and the outputs: IN, FEATURES, OUT and the settings."""
    p.add_argument("--in", dest="in_dir", default="in", help="input folder (IN), for hints and images")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    p.add_argument("--dataset", default="", help="the input's folder name under FEATURES (DATASET)")
    p.add_argument("--out", default="out", help="output folder (OUT)")
    p.add_argument("--backbone", default="vgg16", help="BACKBONE")
    p.add_argument("--weights", default="imagenet", help="WEIGHTS")
    p.add_argument("--size", type=int, default=None, help="SIZE (default: the backbone's own input size)")
    p.add_argument("--layer", default="", help="LAYER (empty: the last block)")
    p.add_argument("--pooling", default="avg", help="POOLING")
    p.add_argument("--precision", default="fp32", help="PRECISION")
    p.add_argument("--stale", choices=["stop", "ok"], default="stop",
                   help="stop: refuse a cache when IN has images added or removed since make features; "
                        "ok: use the cache as it is (STALE)")
    p.add_argument("--weights-fallback", choices=["none"], default=None,
                   help="(demo only) use the random-weights cache when the ImageNet one is missing")


def settings_from(args):
    """The extraction :class:`~extract.model.Settings` named by the flags."""
    from extract.model import Settings
    from extract.precision import resolved_without_calibrating

    settings = Settings(args.backbone, args.weights, args.size, args.pooling, args.precision,
                        getattr(args, "layer", "") or None)  # callers' own namespaces may lack it
    return resolved_without_calibrating(settings, args.features)


@contextlib.contextmanager
def engine(name: str):
    """Runs the block's joblib work on ``name``: ``local`` (processes here) or ``ray``.

    With ``ray``, joblib's work goes to Ray workers through Ray's joblib backend (``RAY_ADDRESS``
    selects a cluster; without it Ray starts on this machine).
    """
    if name == "local":
        yield
        return
    if name != "ray":
        raise ValueError(f"ENGINE must be 'local' or 'ray'; received {name!r}")
    import joblib

    from extract.engine_ray import start

    start()
    from ray.util.joblib import register_ray

    register_ray()
    with joblib.parallel_config(backend="ray"):
        yield


def add_heads_args(p: argparse.ArgumentParser) -> None:
    """Adds the flags that choose and evaluate heads: HEADS, SEED, TEST_SIZE, FOLDS, JOBS,
    DUP_THRESHOLD, MEMORY_GB."""
    p.add_argument("--heads", default="logreg,svm,mlp", help="HEADS")
    p.add_argument("--seed", type=int, default=42, help="SEED")
    p.add_argument("--test-size", type=float, default=0.2,
                   help="TEST_SIZE: hold-out fraction when IN has no split folders (default 0.2)")
    p.add_argument("--folds", type=int, default=5, help="FOLDS")
    p.add_argument("--repeats", default="auto",
                   help="repeats of the cross-validation, or auto: 3 up to 5,000 training images, else 1 (REPEATS)")
    p.add_argument("--jobs", type=int, default=0, help="parallel workers, 0 = every core (JOBS)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where joblib's work runs: local processes, or Ray (ENGINE)")
    p.add_argument("--dup-threshold", default="auto",
                   help="cosine similarity for near-duplicates, or auto (DUP_THRESHOLD)")
    p.add_argument("--memory-gb", default="auto",
                   help="memory budget of the run and its concurrent fits in GiB, or auto: a third "
                        "of the smallest of RAM, cgroup and process limit (MEMORY_GB)")
