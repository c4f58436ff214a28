"""``python -m bench.engines``: the local engine against Ray with 1 and 2 model actors.

Each engine embeds the same generated JPEG files (VGG16, 224 px, fp32, random weights) into a
cold cache in a fresh ``python -m extract`` process, so start-up costs (TensorFlow import, Ray
start, actor start) are included, as a user pays them. Writes ``bench/engines.json`` and prints
a Markdown table (the README quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import common


def run_engine(in_dir: Path, features: Path, engine: str, actors: int, size: int,
               timeout: int = 600) -> dict:
    """One cold run in a fresh process; returns its seconds and its summary line's numbers."""
    shutil.rmtree(features, ignore_errors=True)
    cmd = [sys.executable, "-m", "extract", "--in", str(in_dir), "--features", str(features),
           "--weights", "none", "--size", str(size), "--quiet", "--engine", engine]
    if engine == "ray":
        cmd += ["--actors", str(actors)]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "actors": actors if engine == "ray" else None, "rc": "timeout",
                "images": 0, "wall_seconds": float(timeout), "images_per_second": None,
                "line": f"did not finish in {timeout} s"}
    wall = time.perf_counter() - t0
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    computed = int(line.split("computed ")[1].split(",")[0]) if "computed " in line else 0
    return {"engine": engine, "actors": actors if engine == "ray" else None, "rc": out.returncode,
            "images": computed, "wall_seconds": round(wall, 2),
            "images_per_second": round(computed / wall, 3) if wall else None, "line": line}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--work", default=str(common.ROOT / "bench" / "work" / "engines"))
    p.add_argument("--json", default=str(common.ROOT / "bench" / "engines.json"))
    args = p.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    common.write_images(work / "in", args.images, shape=(240, 320), seed=5)
    runs = [run_engine(work / "in", work / f"f_{e}_{a}", e, a, args.size)
            for e, a in (("local", 0), ("ray", 1), ("ray", 2))]
    result = {"machine": common.machine(), "images": args.images, "size": args.size, "runs": runs,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    base = runs[0]["wall_seconds"]
    print("| engine | model actors | images | seconds (start-up included) | images/s | vs local |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['engine']} | {r['actors'] or '-'} | {r['images']} | {r['wall_seconds']} | "
              f"{r['images_per_second']} | {base / r['wall_seconds']:.2f}x |")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
