"""``make bench`` (second part): model-only images/s and GFLOP/s of every backbone, fp32, 224 px.

So users can weigh a backbone's accuracy (``make compare BACKBONES=...``) against its cost. Each
backbone runs with random weights (``WEIGHTS=none``: the speed does not depend on the values)
through the extraction's own compiled model call (``extract.backend.embedder``, preprocessing
included) on uint8 batches already in memory; after one untimed call (tracing), at most ``batches`` calls are timed
and at most ``max_seconds`` spent per backbone; images/s is the batch over the median call.
GFLOP per image counts 2 per multiply-add of every convolution and dense layer (what the
published figures count; normalisation, activations and additions are left out).

Writes ``bench/backbones.json`` and the section between the markers below in ``BENCHMARKS.md``
(``python -m bench`` keeps that section when it rewrites the file).

Usage::

    python -m bench.backbones [--quick] [--backbones vgg16,convnexttiny]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import common

FULL = dict(size=224, batch=8, batches=3, max_seconds=20.0)
QUICK = dict(size=64, batch=2, batches=1, max_seconds=5.0)
BEGIN, END = "<!-- bench.backbones: begin -->", "<!-- bench.backbones: end -->"
COUNTED = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def parse(argv=None) -> argparse.Namespace:
    from extract.backbones import BACKBONES

    p = argparse.ArgumentParser(prog="python -m bench.backbones", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, one batch of 2 per backbone")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated (default: all)")
    p.add_argument("--json", default=str(common.ROOT / "bench" / "backbones.json"), help="results file")
    p.add_argument("--md", default=str(common.ROOT / "BENCHMARKS.md"), help="file whose section is replaced")
    return p.parse_args(argv)


def _all_layers(model):
    """Every layer of ``model``, nested models (ConvNeXt's blocks) included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def gflop_per_image(model) -> float:
    """GFLOP (2 per multiply-add) of the convolution and dense layers of ``model`` on one image.

    Each such layer does, at every output position, one multiply-add per kernel weight (for a
    separable convolution, its depthwise and pointwise kernels at the same positions).
    """
    macs = 0
    for layer in _all_layers(model):
        if type(layer).__name__ not in COUNTED:
            continue
        positions = math.prod(layer.output.shape[1:-1])
        kernels = sum(math.prod(w.shape) for w in layer.weights if w.name.endswith("kernel"))
        macs += positions * kernels
    return 2 * macs / 1e9


def time_backbone(name: str, cfg: dict) -> dict:
    """Model-only images/s and GFLOP/s of backbone ``name`` in fp32 (see the module docstring)."""
    from extract.backbones import get
    from extract.model import Settings, build
    from extract.backend import embedder

    size = max(cfg["size"], get(name).min_size)  # quick mode's 64 px is below InceptionV3's 75
    settings = Settings(name, "none", size).check()
    gflop = gflop_per_image(build(settings))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (cfg["batch"], size, size, 3), dtype=np.uint8)
    run = embedder(settings)
    t0 = time.perf_counter()
    run(images)  # a NumPy array: the call returns when the batch is computed
    first = time.perf_counter() - t0
    times, start = [], time.perf_counter()
    while len(times) < cfg["batches"] and (not times or time.perf_counter() - start < cfg["max_seconds"]):
        t0 = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t0)
    ips = cfg["batch"] / statistics.median(times)
    return {"backbone": name, "size": size, "dim": settings.dim, "gflop_per_image": round(gflop, 3),
            "images_per_second": round(ips, 3), "gflops": round(ips * gflop, 1),
            "first_call_seconds": round(first, 2), "timed_calls": len(times)}


def markdown(results: dict) -> str:
    """The BENCHMARKS.md section, between its markers."""
    cfg, m = results["settings"], results["machine"]
    lines = [
        BEGIN,
        "## Backbones (`python -m bench.backbones`)",
        "",
        f"Written on {results['created']} ({results['mode']} mode, {results['total_seconds']:.0f} s); "
        f"raw numbers in `bench/backbones.json`. Machine: {m['cpu']}, {m['cores']} cores; load "
        f"average {m['load_average_at_start']} at the start (other processes share the CPU).",
        "",
        f"Model only (the extraction's compiled call, preprocessing included, on in-memory uint8 batches), fp32, "
        f"WEIGHTS=none, SIZE={cfg['size']}, batch {cfg['batch']}; images/s is the batch over the "
        f"median of up to {cfg['batches']} timed calls after one untimed call. GFLOP per image: "
        "2 per multiply-add of the convolution and dense layers.",
        "",
        "| backbone | SIZE | dim | GFLOP per image | images/s | GFLOP/s | first call (s, tracing) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["backbones"]:
        lines.append(f"| `{r['backbone']}` | {r['size']} | {r['dim']} | {r['gflop_per_image']:.2f} | "
                     f"{r['images_per_second']:.2f} | {r['gflops']:.0f} | {r['first_call_seconds']:.1f} |")
    lines += ["", END]
    return "\n".join(lines)


def replace_section(md_path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Puts ``section`` in place of the section of ``md_path`` between ``begin`` and ``end``
    (appended when absent)."""
    text = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    args = parse(argv)
    from extract._tf import tensorflow
    from extract.backbones import parse_list

    tensorflow()
    cfg = dict(QUICK if args.quick else FULL)
    t_all = time.perf_counter()
    machine = common.machine()
    rows = []
    for name in parse_list(args.backbones):
        rows.append(time_backbone(name, cfg))
        r = rows[-1]
        print(f"[bench.backbones] {name}: {r['images_per_second']:.2f} images/s, "
              f"{r['gflop_per_image']:.2f} GFLOP per image, {r['gflops']:.0f} GFLOP/s", file=sys.stderr,
              flush=True)
    results = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full", "settings": cfg, "machine": machine,
        "versions": common.versions(), "backbones": rows,
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    section = markdown(results)
    replace_section(Path(args.md), section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
