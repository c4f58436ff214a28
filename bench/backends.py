"""``python -m bench.backends``: model-only images/s of each Keras backend here, interleaved.

Keras runs one backend per process, so each backend gets a process of its own that builds VGG16
(``WEIGHTS=none``) once (``torch-compile``: PyTorch with ``EMBEDCMP_TORCH_COMPILE=1``); the parent then asks them in turn, round after round, to time their
compiled call on the same in-memory uint8 batch, so every backend sees the same load (the CPU
may be shared) and the medians compare. Nothing is written: it prints one line per backend and
precision, and the whole table as JSON at the end.

Usage::

    python -m bench.backends [--backends tensorflow,jax,torch] [--size 224] [--batch 16]
                             [--rounds 5] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="",
                   help="comma-separated: tensorflow, jax, torch, torch-compile (default: every one installed)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def serve(args) -> None:
    """The child: builds the calls, then times one call per line ``<precision>`` read on stdin."""
    from extract.backend import embedder
    from extract.model import Settings

    x = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    calls = {}
    for p in args.precisions.split(","):
        calls[p] = embedder(Settings("vgg16", "none", args.size, "avg", p, None, args.serve.split("-")[0]))
        calls[p](x)  # built, compiled and warm
    print("ready", flush=True)
    for line in sys.stdin:
        call = calls[line.strip()]
        t0 = time.perf_counter()
        call(x)
        print(args.batch / (time.perf_counter() - t0), flush=True)


def main(argv=None) -> int:
    args = parse(argv)
    if args.serve:
        serve(args)
        return 0
    backends = [b for b in args.backends.split(",") if b] or [
        b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b) is not None]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    children = {}
    for b in backends:
        from extract.calls import TORCH_COMPILE_ENV

        cmd = [sys.executable, "-m", "bench.backends", "--serve", b, "--size", str(args.size),
               "--batch", str(args.batch), "--precisions", args.precisions]
        child_env = dict(env, **({TORCH_COMPILE_ENV: "1"} if b == "torch-compile" else {}))
        children[b] = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert children[b].stdout.readline().strip() == "ready", f"{b} did not start"
    rates = {(b, p): [] for b in backends for p in args.precisions.split(",")}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for (b, p), got in rates.items():
            children[b].stdin.write(p + "\n")
            children[b].stdin.flush()
            got.append(float(children[b].stdout.readline()))
        load.append(os.getloadavg()[0])
    for child in children.values():
        child.stdin.close()
        child.wait()
    table = {f"{b} {p}": round(statistics.median(v), 2) for (b, p), v in rates.items()}
    for name, ips in table.items():
        print(f"{name}: {ips} images/s (median of {args.rounds}; rounds {[round(v, 2) for v in rates[tuple(name.split())]]})")
    print(json.dumps({"size": args.size, "batch": args.batch, "rounds": args.rounds,
                      "images_per_second": table, "load_average": [round(v, 2) for v in load]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
