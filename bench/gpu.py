"""``python -m bench.gpu``: VGG16 at 224 px on a GPU with PyTorch and JAX, fp32 and bf16.

Needs only this project, Keras (with ``namex``, and ``optree`` for JAX) and what a GPU machine
usually has: PyTorch and/or JAX with CUDA, NumPy, Pillow, pandas, scikit-learn. No TensorFlow,
no ImageNet weights: the weights are random (``WEIGHTS=none``, drawn by NumPy; the speed does
not depend on their values). It generates ``--images`` JPEG files of 224 x 224 px (like the
test and valid images of the original data set) and measures, per backend (each in its own
process: Keras runs one backend per process) and precision:

- model-only images/s: the extraction's own compiled call (preprocessing included) on one
  decoded batch in memory, one batch in flight while the next is queued (as extraction runs it);
- end-to-end images/s: ``extract_features`` from the files to the written cache (listing,
  reading, hashing, decoding, model, writing), after the model is built and compiled;
- the GPU memory the framework took at most, the lowest cosine similarity between an image's
  bf16 and fp32 vectors, and the decoding rate per core and of the decoding pool.

Writes ``bench/gpu.json`` and the GPU section of ``BENCHMARKS.md`` when every backend ran on a
GPU; a run on a CPU (``--device cpu``, a smoke test) writes under ``bench/work/`` instead, so
its numbers are never taken for GPU figures.

Usage::

    python -m bench.gpu                                   # on a GPU machine, about 5 minutes
    python -m bench.gpu --device cpu --images 64          # a smoke test on any machine
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench.gpu: begin -->", "<!-- bench.gpu: end -->"
GPU_DEFAULTS = dict(images=16384, batch=256, calls=10, repeats=3)
CPU_DEFAULTS = dict(images=64, batch=16, calls=2, repeats=1)
# (key, rule, bound): the figures a GPU run is held to (an H100's; see the README).
TARGETS = (("best_bf16_model_only_ips", ">=", 5000.0), ("best_bf16_efficiency", ">=", 0.8),
           ("worst_bf16_min_cosine", ">=", 0.999))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto",
                   help="gpu: fail unless each backend sees a GPU; cpu: hide every GPU (smoke "
                        "test); auto: the GPU when a backend sees one")
    p.add_argument("--backends", default="",
                   help="comma-separated (default: torch and jax, those installed; tensorflow "
                        "when named)")
    p.add_argument("--images", type=int, default=None, help="generated JPEG files (GPU 16384, CPU 64)")
    p.add_argument("--size", type=int, default=224, help="SIZE (the files are this size too)")
    p.add_argument("--batch", type=int, default=None, help="BATCH (GPU 256, CPU 16)")
    p.add_argument("--calls", type=int, default=None, help="model calls per model-only timing")
    p.add_argument("--repeats", type=int, default=None, help="model-only timings (the median is kept)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--decoders", default="auto", help="DECODERS of the end-to-end runs")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--decode-only", action="store_true",
                   help="only generate the files and measure decoding (per core, threads, pool)")
    p.add_argument("--work", default=str(ROOT / "bench" / "work" / "gpu"), help="scratch folder (emptied)")
    p.add_argument("--json", default=None, help="results (default: bench/gpu.json on a GPU, "
                                                "bench/work/gpu-cpu.json on a CPU)")
    p.add_argument("--md", default=None, help="the Markdown file whose GPU section is replaced "
                                              "(default: BENCHMARKS.md on a GPU, bench/work/BENCHMARKS-cpu.md on a CPU)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = CPU_DEFAULTS if args.device == "cpu" else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def say(msg: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs and decoding

def _write_one(job: tuple) -> None:
    from PIL import Image

    from bench.common import make_image

    i, path, size = job
    Image.fromarray(make_image(i % 2, 7_000_003 + i, (size, size))).save(path, quality=90)


def write_inputs(folder: Path, n: int, size: int) -> list[str]:
    """``n`` distinct JPEG files of ``size`` x ``size`` px, two classes, written in parallel."""
    from bench.common import CLASSES

    jobs = []
    for i in range(n):
        path = folder / CLASSES[i % 2] / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((i, str(path), size))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_one, jobs, chunksize=64))
    return sorted(j[1] for j in jobs)


def decode_rates(paths: list[str], size: int, decoders: int) -> dict:
    """Images/s of reading, hashing and decoding: on one core, in threads, in a process pool.

    ``pool_parent_cpu_ms`` is the CPU time the run's own process spends per file while the pool
    reads and decodes: a single process can feed at most about 1000 / that files per second.
    """
    from extract.decoders import read_in_processes
    from extract.machine import usable_cores
    from extract.pipeline import read_ahead, read_one

    cores = usable_cores()
    sample = paths[:2000]
    t0 = time.perf_counter()
    for i, path in enumerate(sample):
        read_one(i, path, size, 10**9, lambda sha: False)
    out = {"cores": cores, "per_core_ips": round(len(sample) / (time.perf_counter() - t0), 1)}
    workers = min(8, cores)
    t0 = time.perf_counter()
    n = sum(1 for _ in read_ahead(paths, size, 10**9, lambda sha: False, workers=workers,
                                  window=512 + workers))
    out["threads_ips"] = round(n / (time.perf_counter() - t0), 1)
    if decoders > 0:
        t0, cpu0 = time.perf_counter(), time.process_time()
        n = sum(1 for _ in read_in_processes(paths, size, 10**9, lambda sha: False, set(),
                                             decoders, window=512))
        out["pool_ips"] = round(n / (time.perf_counter() - t0), 1)
        out["pool_parent_cpu_ms"] = round(1000 * (time.process_time() - cpu0) / n, 3)
    out["pool_processes"] = decoders
    out["threads"] = workers
    return out


# ---------------------------------------------------------------- one backend, in its own process

def model_only_ips(call, x: np.ndarray, calls: int, repeats: int) -> float:
    """Images/s of ``call`` on batch ``x``, one batch in flight while the next is queued."""
    call(x)
    call(x)  # compiled and warm
    rates = []
    for _ in range(repeats):
        t0, flight = time.perf_counter(), None
        for _ in range(calls):
            launched = call.launch(x)
            if flight is not None:
                call.fetch(flight)
            flight = launched
        call.fetch(flight)
        rates.append(calls * len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)


def gpu_memory_mib(backend: str, reset: bool = False) -> float | None:
    """The most GPU memory the framework held since the last reset (JAX: since it started)."""
    try:
        if backend == "torch":
            import torch

            if not torch.cuda.is_available():
                return None
            value = torch.cuda.max_memory_allocated() / 2**20
            if reset:
                torch.cuda.reset_peak_memory_stats()
            return round(value, 1)
        if backend == "jax":
            import jax

            first = jax.devices()[0]
            stats = first.memory_stats() if first.platform != "cpu" else None
            return round(stats["peak_bytes_in_use"] / 2**20, 1) if stats else None
        from extract._tf import tensorflow

        tf = tensorflow()
        if not tf.config.list_physical_devices("GPU"):
            return None
        value = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        if reset:
            tf.config.experimental.reset_memory_stats("GPU:0")
        return round(value, 1)
    except Exception:  # memory statistics are a nicety: never fail the run for them
        return None


def _end_to_end(args, backend: str, precision: str, features: Path, decoders) -> tuple[float, object]:
    from extract import Settings, extract_features

    shutil.rmtree(features, ignore_errors=True)
    settings = Settings("vgg16", "none", args.size, "avg", precision, None, backend)
    summary = extract_features(str(Path(args.work) / "in"), str(features), settings,
                               batch=args.batch, progress=False, log=lambda *a: None,
                               decoders=decoders)
    return summary.computed / summary.seconds, summary


def _precision_run(args, backend: str, precision: str, x: np.ndarray) -> dict:
    from extract.backend import embedder
    from extract.model import Settings

    gpu_memory_mib(backend, reset=True)
    t0 = time.perf_counter()
    call = embedder(Settings("vgg16", "none", args.size, "avg", precision, None, backend))
    call(x)
    first = time.perf_counter() - t0
    mo = model_only_ips(call, x, args.calls, args.repeats)
    decoders = None if args.decoders == "auto" else int(args.decoders)
    e2e, summary = _end_to_end(args, backend, precision, Path(args.work) / f"f_{backend}_{precision}", decoders)
    out = {"model_only_ips": round(mo, 1), "end_to_end_ips": round(e2e, 1),
           "efficiency": round(e2e / mo, 3), "first_call_seconds": round(first, 2),
           "computed": summary.computed, "rejected": summary.rejected,
           "gpu_memory_mib": gpu_memory_mib(backend)}
    say(f"{backend} {precision}: model-only {mo:.1f} images/s, end-to-end {e2e:.1f} "
        f"(efficiency {e2e / mo:.3f}), first call {first:.1f} s, GPU memory {out['gpu_memory_mib']} MiB")
    return out


def _min_cosine(args, backend: str) -> float:
    from bench.common import cosines
    from extract.cache import read_cache
    from extract.model import Settings

    vecs = {}
    for p in ("fp32", "bf16"):
        key = Settings("vgg16", "none", args.size, "avg", p).key
        (folder,) = (Path(args.work) / f"f_{backend}_{p}").glob(f"*/{key}")
        emb, rows, _ = read_cache(folder)
        vecs[p] = (emb, [r["sha256"] for r in rows])
    assert vecs["fp32"][1] == vecs["bf16"][1], "the two caches hold other images"
    return round(float(cosines(vecs["bf16"][0], vecs["fp32"][0]).min()), 6)


def _torch_compiled(args, x: np.ndarray) -> dict:
    """Model-only bf16 with ``EMBEDCMP_TORCH_COMPILE=1`` (compile time included in first call)."""
    from extract import backend as B
    from extract.calls import TORCH_COMPILE_ENV
    from extract.model import Settings

    os.environ[TORCH_COMPILE_ENV] = "1"
    B._EMBEDDERS.clear()
    try:
        t0 = time.perf_counter()
        call = B.embedder(Settings("vgg16", "none", args.size, "avg", "bf16", None, "torch"))
        call(x)
        first = time.perf_counter() - t0
        return {"bf16_model_only_ips": round(model_only_ips(call, x, args.calls, args.repeats), 1),
                "first_call_seconds": round(first, 1)}
    except Exception as err:  # torch.compile has open issues with some models: record, go on
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        os.environ.pop(TORCH_COMPILE_ENV, None)
        B._EMBEDDERS.clear()


def child(args) -> dict:
    """Every measurement of one backend (``args.child``), in this process."""
    from bench.common import decoded_batch
    from extract.backend import device_name
    from extract.framework import keras_for, versions

    backend = args.child
    t0 = time.perf_counter()
    keras_for(backend)
    out = {"backend": backend, "import_seconds": round(time.perf_counter() - t0, 2),
           "device": device_name(backend)}
    if args.device == "gpu" and not out["device"].startswith("GPU"):
        raise SystemExit(f"--device gpu: {backend} sees no GPU (it would run on {out['device']})")
    paths = sorted(str(p) for p in (Path(args.work) / "in").rglob("*.jpg"))
    x = decoded_batch((paths * args.batch)[:args.batch], args.size, args.batch)
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        out[p] = _precision_run(args, backend, p, x)
    if {"fp32", "bf16"} <= set(precisions):
        out["bf16_min_cosine"] = _min_cosine(args, backend)
        say(f"{backend}: lowest cosine bf16 vs fp32 over {out['fp32']['computed']} images: "
            f"{out['bf16_min_cosine']}")
    if "bf16" in precisions and args.decoders == "auto":
        e2e, _ = _end_to_end(args, backend, "bf16", Path(args.work) / f"f_{backend}_threads", 0)
        out["bf16_end_to_end_threads_ips"] = round(e2e, 1)
        say(f"{backend} bf16 end-to-end with decoding in threads only: {e2e:.1f} images/s")
    if backend == "torch" and not args.no_compile and "bf16" in precisions:
        out["torch_compile"] = _torch_compiled(args, x)
        say(f"torch.compile: {out['torch_compile']}")
    out["versions"] = versions(backend)
    return out


# ---------------------------------------------------------------- the parent: inputs, children, results

def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in ("torch", "jax") if importlib.util.find_spec(b) is not None]


def run_child(args, backend: str, env: dict) -> dict:
    """Runs :func:`child` for ``backend`` in a new process; returns its results (or its error)."""
    out = Path(args.work) / f"result_{backend}.json"
    cmd = [sys.executable, "-m", "bench.gpu", "--child", backend, "--child-out", str(out),
           "--device", args.device, "--size", str(args.size), "--batch", str(args.batch),
           "--calls", str(args.calls), "--repeats", str(args.repeats), "--images", str(args.images),
           "--precisions", args.precisions, "--decoders", args.decoders, "--work", args.work]
    if args.no_compile:
        cmd.append("--no-compile")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(r.stderr[-20000:])
    if r.returncode != 0 or not out.is_file():
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"backend": backend, "error": f"exit {r.returncode}: {tail}"}
    result = json.loads(out.read_text())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def summarize(results: dict) -> dict:
    """The headline figures over the backends that ran (pure; tested)."""
    ok = [b for b in results["backends"].values() if "error" not in b and "bf16" in b]
    if not ok:
        return {}
    best = max(ok, key=lambda b: b["bf16"]["model_only_ips"])
    out = {"best_backend": best["backend"], "best_bf16_model_only_ips": best["bf16"]["model_only_ips"],
           "best_bf16_end_to_end_ips": best["bf16"]["end_to_end_ips"],
           "best_bf16_efficiency": best["bf16"]["efficiency"]}
    cosines = [b["bf16_min_cosine"] for b in ok if "bf16_min_cosine" in b]
    if cosines:
        out["worst_bf16_min_cosine"] = min(cosines)
    out["verdicts"] = {key: ("met" if (out[key] >= bound if rule == ">=" else out[key] <= bound)
                             else "MISSED")
                       for key, rule, bound in TARGETS if key in out}
    return out


def _table(results: dict) -> list[str]:
    lines = ["| backend | device | precision | model-only images/s | end-to-end images/s | "
             "efficiency | GPU memory (MiB) | first call (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, b in results["backends"].items():
        if "error" in b:
            lines.append(f"| {name} | | | failed: {b['error']} | | | | |")
            continue
        for p in ("fp32", "bf16"):
            if p in b:
                r = b[p]
                lines.append(f"| {name} | {b['device']} | {p} | {r['model_only_ips']:,.1f} | "
                             f"{r['end_to_end_ips']:,.1f} | {r['efficiency']:.3f} | "
                             f"{r['gpu_memory_mib'] if r['gpu_memory_mib'] is not None else ''} | "
                             f"{r['first_call_seconds']} |")
    return lines


def markdown(results: dict) -> str:
    """The GPU section of BENCHMARKS.md, between its markers."""
    s, d, head = results["settings"], results["decode"], results["summary"]
    lines = [BEGIN, "## GPU (`python -m bench.gpu`)", "",
             f"Written on {results['created']} in {results['total_seconds']:.0f} s on "
             f"{results['gpus'] or 'no NVIDIA GPU'} ({results['machine']['cpu']}, "
             f"{d['cores']} cores); raw numbers in `{results['json_name']}`. VGG16, WEIGHTS=none "
             f"(NumPy rule), SIZE={s['size']}, BATCH={s['batch']}, POOLING=avg, {s['images']:,} "
             f"generated {s['size']} x {s['size']} JPEG files; model-only is the median of "
             f"{s['repeats']} timings of {s['calls']} calls with one batch in flight.", ""]
    lines += _table(results)
    lines += ["", "| number | value | target | |", "|---|---|---|---|"]
    for key, rule, bound in TARGETS:
        if key in head:
            lines.append(f"| `{key}` | {head[key]:,} | {rule} {bound:,} | {head['verdicts'][key]} |")
    lines += ["", f"Decoding (read, SHA-256, decode, resize) of these files: {d['per_core_ips']:,} "
                  f"images/s on one core; {d.get('threads_ips', 0):,} images/s in {d['threads']} "
                  "threads of one process"
              + (f"; {d['pool_ips']:,} images/s with {d['pool_processes']} decoding processes"
                 if "pool_ips" in d else "") + "."]
    for name, b in results["backends"].items():
        extra = []
        if "bf16_min_cosine" in b:
            extra.append(f"lowest cosine bf16 vs fp32 {b['bf16_min_cosine']}")
        if "bf16_end_to_end_threads_ips" in b:
            extra.append(f"bf16 end-to-end with decoding in threads only {b['bf16_end_to_end_threads_ips']:,} images/s")
        if "torch_compile" in b:
            tc = b["torch_compile"]
            extra.append(f"torch.compile: {tc['error']}" if "error" in tc else
                         f"bf16 model-only with torch.compile {tc['bf16_model_only_ips']:,} images/s "
                         f"(first call {tc['first_call_seconds']} s)")
        if extra:
            lines.append(f"- {name}: " + "; ".join(extra) + ".")
    lines += ["", END]
    return "\n".join(lines)


def outputs(args, results: dict) -> tuple[Path, Path]:
    """Where the results go: bench/gpu.json and BENCHMARKS.md only when every backend ran on a GPU."""
    on_gpu = all(str(b.get("device", "")).startswith("GPU") for b in results["backends"].values())
    json_path = Path(args.json) if args.json else (
        ROOT / "bench" / "gpu.json" if on_gpu else ROOT / "bench" / "work" / "gpu-cpu.json")
    md_path = Path(args.md) if args.md else (
        ROOT / "BENCHMARKS.md" if on_gpu else ROOT / "bench" / "work" / "BENCHMARKS-cpu.md")
    return json_path, md_path


def main(argv=None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        result = child(args)
        Path(args.child_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    from bench.backbones import replace_section
    from bench.common import machine
    from extract.machine import gpu_names
    from extract.decoders import decode_processes

    t_all = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    if args.device == "cpu":
        from extract.devices import cpu_only_environment

        env.update(cpu_only_environment())
    backends = [b for b in args.backends.split(",") if b] or installed_backends()
    if not backends:
        raise SystemExit("no backend to measure: install torch or jax (see the README), or pass --backends")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    say(f"writing {args.images} JPEG files of {args.size} px under {work / 'in'}")
    paths = write_inputs(work / "in", args.images, args.size)
    gpus = gpu_names() if args.device != "cpu" else []
    decoders = decode_processes(None if args.decoders == "auto" else int(args.decoders), gpu=bool(gpus))
    decode = decode_rates(paths, args.size, decoders)
    say(f"decoding: {decode}")
    if args.decode_only:
        print(json.dumps(decode))
        return 0
    results = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "settings": {k: getattr(args, k) for k in ("device", "images", "size", "batch", "calls",
                                                           "repeats", "precisions", "decoders")},
               "machine": machine(), "gpus": "; ".join(gpus), "decode": decode, "backends": {}}
    for backend in backends:
        say(f"{backend}: starting its own process")
        results["backends"][backend] = run_child(args, backend, env)
    results["summary"] = summarize(results)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    json_path, md_path = outputs(args, results)
    inside = json_path.resolve().is_relative_to(ROOT)
    results["json_name"] = os.path.relpath(json_path, ROOT) if inside else str(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    section = markdown(results)
    replace_section(md_path, section, BEGIN, END)
    print(section)
    say(f"wrote {json_path} and the GPU section of {md_path}")
    failed = [b for b, r in results["backends"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
