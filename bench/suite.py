"""The pieces of ``make bench``: generated inputs, timed measurements and the results table.

Everything here runs with random-init weights (``WEIGHTS=none``) on files generated under
``bench/work/`` (git-ignored), so it needs no download and no real data. Each headline number is
a ratio of two measurements taken in the same run, because the machine may be shared: absolute
images/s move with the load of other processes, ratios of interleaved measurements much less.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import (CLASSES, FAKE_DATASET, ROOT, cosines, decoded_batch, fake_embeddings,  # noqa: F401
                     machine, make_image, versions, write_fake_cache, write_images)

# Every key results.json must hold (tests check them).
REQUIRED_KEYS = (
    "extract_model_only_ips", "extract_end_to_end_ips", "extract_efficiency",
    "bf16_speedup", "bf16_min_cosine", "bf16_logreg_accuracy_change",
    "incremental_cost_ratio", "compare_seconds_12k", "compare_tuned_seconds_12k", "seed_style_seconds_12k",
    "seed_style_over_compare", "rss_growth", "noop_seconds_200k", "noop_peak_rss_mib_200k",
    "noop_seconds_200k_auto",
    "auto_vs_best", "compare_seconds_200k", "compare_peak_rss_mib_200k",
    "audit_seconds_200k", "audit_peak_rss_mib_200k",
)

# The targets of issue #8 on the reference machine (2-core Zen 4): (key, rule, bound).
TARGETS = (
    ("extract_efficiency", ">=", 0.9),
    ("bf16_speedup", ">=", 1.6),
    ("bf16_min_cosine", ">=", 0.99),
    ("incremental_cost_ratio", "<=", 0.05),
    ("rss_growth", "<=", 1.2),
    ("compare_seconds_12k", "<=", 15.0),  # TUNE=0 (issue 13)
    ("compare_tuned_seconds_12k", "<=", 60.0),  # nested tuning of the 3 heads (issue 13)
    ("seed_style_over_compare", ">=", 100.0),
    ("noop_seconds_200k", "<=", 10.0),
    ("noop_seconds_200k_auto", "<=", 10.0),
    ("auto_vs_best", ">=", 0.95),
    ("noop_peak_rss_mib_200k", "<=", 1024.0),
    ("compare_seconds_200k", "<=", 300.0),
)


# ---------------------------------------------------------------- the machine and the versions

# ---------------------------------------------------------------- generated inputs

def link_tree(src: Path, dst: Path, n: int) -> Path:
    """A folder with the first ``n`` images of ``src`` (hard links, else copies), classes kept."""
    shutil.rmtree(dst, ignore_errors=True)
    files = sorted(p for p in Path(src).rglob("*.jpg"))[:n]
    for p in files:
        q = Path(dst) / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, q)
        except OSError:
            shutil.copy2(p, q)
    return Path(dst)


def logreg_cv_accuracy(X, y, folds: int = 5, seed: int = 0) -> float:
    """Mean stratified-CV accuracy of StandardScaler + LogisticRegression (the `logreg` head)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, X, y, cv=cv).mean())


def write_cached_input(in_dir: Path, features: Path, n: int, dim: int = 512, per_folder: int = 1000):
    """``n`` small distinct files under ``in_dir`` and a complete cache of them under ``features``.

    The files are never decoded (a run over them finds everything cached), so their content only
    has to differ; the cache gets random vectors. Returns the settings of that cache.
    """
    from extract import files
    from extract.cache import input_id, write_cache
    from extract.model import Settings

    settings = Settings(weights="none", size=224)
    for i in range(n):
        folder = Path(in_dir) / CLASSES[i % 2] / f"part_{i // (2 * per_folder):04d}"
        if i < 2 * per_folder or i % (2 * per_folder) < 2:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:07d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + i.to_bytes(8, "little"))
    listing = files.list_images(in_dir)
    rows = [dict(c.fields(), sha256=files.sha256_file(c.abspath)) for c in listing.candidates]
    rng = np.random.default_rng(0)
    meta = {"key": settings.key, "backbone": "vgg16", "weights": "none", "image_size": 224,
            "pooling": "avg", "precision": "fp32", "dim": dim, "n": len(rows),
            "layout": listing.layout, "empty_classes": listing.empty_classes,
            "class_names": list(CLASSES), "computed": len(rows), "reused": 0, "rejected": 0,
            "seconds": 0.0, "input": os.path.abspath(in_dir), "input_id": input_id(in_dir),
            "note": "random vectors written by make bench"}
    write_cache(Path(features) / input_id(in_dir), settings.key,
                lambda a, b: rng.standard_normal((b - a, dim), dtype=np.float32), rows, meta, [],
                dim=dim)
    return settings


def remember_fp32(features: Path, settings, batch: int = 32) -> None:
    """Records fp32 as this machine's ``PRECISION=auto`` choice for ``settings`` and ``batch``,
    as a calibrating run would leave it, so a later ``--precision auto`` run only looks it up."""
    from extract import choices
    from extract.machine import machine_id
    from extract.precision import setting_id

    info = {"chosen": "fp32", "note": "written by make bench for the PRECISION=auto no-op run"}
    choices.remember(features, machine_id(), setting_id(settings, batch), info,
                     log=lambda msg: print(msg, file=sys.stderr))


def measure_noop(work: Path, n: int, env: dict, precisions=("fp32",)) -> dict:
    """``python -m extract`` over ``n`` already-cached files, once per precision (fresh processes).

    For ``auto``, fp32 is remembered as this machine's choice first, so the run resolves the
    precision from ``FEATURES/.precision.json`` and has nothing to compute.

    Returns:
        ``{precision: (peak MiB, seconds, exit code)}``.
    """
    noop_in, noop_feat = Path(work) / "in_noop", Path(work) / "features_noop"
    settings = write_cached_input(noop_in, noop_feat, n)
    out = {}
    try:
        for precision in precisions:
            if precision == "auto":
                remember_fp32(noop_feat, settings)
            cmd = [sys.executable, "-m", "extract", "--in", str(noop_in), "--features", str(noop_feat),
                   "--weights", "none", "--size", str(settings.size), "--batch", "32",
                   "--precision", precision, "--quiet"]
            out[precision] = child_peak_rss(cmd, env)
    finally:
        shutil.rmtree(noop_in, ignore_errors=True)
        shutil.rmtree(noop_feat, ignore_errors=True)
    return out


# ---------------------------------------------------------------- extraction measurements

def sample_uint8(folder: Path, size: int, n: int) -> np.ndarray:
    """``n`` of the generated images, resized as extraction does (uint8), for calibration."""
    from extract.load import load_image

    return np.stack([load_image(str(p), size) for p in sorted(Path(folder).rglob("*.jpg"))[:n]])


def model_only_ips(settings, images, n_batches: int) -> float:
    """Images/s of the extraction's own traced model call on an in-memory batch (median of
    ``n_batches`` timed calls, after one untimed call)."""
    from extract.backend import embedder

    run = embedder(settings)
    run(images)
    times = []
    for _ in range(n_batches):
        t0 = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t0)
    return int(images.shape[0]) / float(np.median(times))


def end_to_end(in_dir: Path, features: Path, settings, batch: int):
    """Runs ``extract.extract_features`` on a cold cache in this process.

    Returns:
        ``(images/s, Summary)``; images/s is computed images over the run's own seconds (listing,
        hashing, decoding, model, writing the cache).
    """
    from extract import extract_features

    shutil.rmtree(features, ignore_errors=True)
    summary = extract_features(str(in_dir), str(features), settings, batch=batch,
                               progress=False, log=lambda *a, **k: None)
    return summary.computed / summary.seconds, summary


def aligned_embeddings(features: Path, settings) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings, paths, labels) of one cache folder."""
    from extract.cache import read_cache

    (folder,) = Path(features).glob(f"*/{settings.key}")
    emb, rows, _ = read_cache(folder)
    return emb, [r["path"] for r in rows], [r["label"] for r in rows]


def child_peak_rss(cmd: list[str], env=None) -> tuple[float, float, int]:
    """Runs ``cmd`` and returns (peak resident memory in MiB, seconds, exit code) of that child.

    A ``python -m MODULE`` command runs under :mod:`bench.peak`, which reports the child's own
    peak (VmHWM); other commands fall back to the child's rusage (os.wait4), which on Linux also
    counts the parent's memory copied before ``exec``.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        if len(cmd) > 2 and cmd[1] == "-m":
            cmd = [cmd[0], "-m", "bench.peak", *cmd[2:]]
        env = dict(env or os.environ, BENCH_PEAK_FILE=str(peak_file))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
        proc.stderr.close()
        try:
            mib = float(peak_file.read_text())
        except (OSError, ValueError):
            mib = usage.ru_maxrss / 1024.0
    return mib, seconds, proc.returncode


_COMPARE_CHILD = """
import json, sys, time
from pathlib import Path
from classify import compare
from extract.model import Settings
features, out, tune, dataset, size, heads = sys.argv[1:7]
settings = Settings(weights="none", size=int(size))
t0 = time.perf_counter()
table = compare(Path(features), settings, Path(out), heads=heads, seed=42, folds=5,
                log=lambda *a, **k: None, dataset=dataset, tune=tune)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "table": json.loads(table.to_json(orient="records"))}))
"""


def compare_in_child(features: Path, out: Path, settings, tune: str, heads: str = "logreg,svm,mlp"):
    """Times ``classify.compare`` (``heads``, seed 42, 5 folds) on the synthetic cache in
    a fresh Python process, as ``make compare`` runs it: without TensorFlow, which the benchmark's
    own process holds by then (three paired runs of TUNE=0 took 1.0 s longer after TensorFlow had
    run in the process). Imports happen before the clock starts.

    Returns:
        (seconds, the comparison table).
    """
    import pandas as pd

    proc = subprocess.run([sys.executable, "-c", _COMPARE_CHILD, str(features), str(out), tune,
                           FAKE_DATASET, str(settings.size), heads], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise RuntimeError(f"compare (TUNE={tune}) failed:\n{proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["seconds"], pd.DataFrame(got["table"])


def knn_seconds(features: Path, out: Path, settings) -> dict:
    """The knn head's compare cost on the synthetic cache: ``knn_seconds_12k`` is its
    ``fit_seconds + cv_seconds`` (the 5 CV fits with their predictions, and the final fit) in a
    ``HEADS=knn`` compare with TUNE=0, as ``compare_seconds_12k``; ``knn_tuned_seconds_12k`` the
    same with TUNE=1 (k searched by 3-fold inner CV in every fit); ``knn_compare_run_seconds_12k``
    the whole run's seconds (duplicate search and every output included)."""
    got = {}
    for tune, key in (("0", "knn_seconds_12k"), ("1", "knn_tuned_seconds_12k")):
        seconds, table = compare_in_child(features, out.with_name(f"{out.name}-tune{tune}"), settings, tune, heads="knn")
        row = table.set_index("head").loc["knn"]
        got[key] = round(float(row["fit_seconds"]) + float(row["cv_seconds"]), 2)
        if tune == "0":
            got.update(knn_compare_run_seconds_12k=round(seconds, 2), knn_cv_12k=round(float(row["cv_mean"]), 4),
                       knn_accuracy_12k=round(float(row["accuracy"]), 4))
    return got


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 matrix-product speed of numpy's BLAS on this machine (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def vgg16_gflop_per_image(size: int) -> float:
    """GFLOP (2 per multiply-add) of VGG16's 13 convolutions on one size x size image."""
    cfg = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256),
           "M", (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
    side, total = size, 0
    for layer in cfg:
        if layer == "M":
            side //= 2
            continue
        cin, cout = layer
        total += side * side * 9 * cin * cout
    return 2 * total / 1e9


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- the table

def fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if 0.99 <= abs(v) < 1:
            return f"{v:.5f}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def verdict(results: dict, key: str, rule: str, bound: float) -> str:
    v = results.get(key)
    if v is None:
        return "not measured"
    ok = v >= bound if rule == ">=" else v <= bound
    return "met" if ok else "MISSED"


def markdown(results: dict) -> str:
    """BENCHMARKS.md: the results table, the settings, the machine and the versions."""
    r = results
    s = r["settings"]
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{r['command']}` on {r['created']} ({r['mode']} mode, {r['total_seconds']:.0f} s). "
        "Regenerated on every run; the raw numbers are in `bench/results.json`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), "
        f"{m['ram_gib']} GiB RAM, {m['os']}; load average {m['load_average_at_start']} at the "
        f"start and {m.get('load_average_at_end')} at the end (other processes share the CPU: "
        "compare ratios, not absolute speeds).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        f"Settings: VGG16, WEIGHTS=none (random init), SIZE={s['size']}, BATCH={s['batch']}, "
        f"POOLING=avg; generated {s['image_shape'][1]}x{s['image_shape'][0]} JPEG files under "
        f"`bench/work/`. Each speed is the median of {s['rounds']} interleaved rounds; each ratio is "
        "the median of the per-round ratios.",
        "",
        "| number | value | target | | what it is |",
        "|---|---|---|---|---|",
    ]
    target = {k: (rule, bound) for k, rule, bound in TARGETS}

    def row(key, what, unit=""):
        v = r.get(key)
        t = target.get(key)
        tt = f"{t[0]} {t[1]:g}" if t else ""
        ver = verdict(r, key, *t) if t else ""
        lines.append(f"| `{key}` | {fmt(v)}{unit} | {tt} | {ver} | {what} |")

    row("extract_model_only_ips", f"images/s of the model call alone (preprocessing included) on decoded in-memory batches ({s['precision']})")
    row("extract_end_to_end_ips", f"images/s of `extract_features` from JPEG files to the written cache ({s['precision']}, "
        f"{s['e2e_images']} images per round, in-process after a warm-up)")
    row("extract_efficiency", "end-to-end / model-only: the share of the model's speed that extraction keeps")
    row("fp32_model_only_ips", "the same model-only speed in fp32")
    row("bf16_model_only_ips", "the same model-only speed in bf16 (Keras mixed_bfloat16)")
    row("fp32_end_to_end_ips", "end-to-end images/s, fp32")
    row("bf16_end_to_end_ips", "end-to-end images/s, bf16")
    row("fp32_efficiency", "end-to-end / model-only, fp32")
    row("bf16_efficiency", "end-to-end / model-only, bf16")
    row("bf16_speedup", "end-to-end bf16 / fp32")
    row("bf16_model_only_speedup", "model-only bf16 / fp32")
    row("fp32_model_gflops", "fp32 model-only speed in GFLOP/s (VGG16 without top: 2 x 15.35 G multiply-adds per 224 px image)")
    row("bf16_model_gflops", "the same in bf16")
    row("sgemm_gflops", "this machine's float32 matrix-product speed (numpy BLAS, 2048 x 2048), for scale")
    row("auto_vs_best", "model-only images/s of the precision PRECISION=auto chose here "
        f"({r.get('auto_choice')}, calibrated in {r.get('auto_calibration_seconds')} s) / those of the "
        "best fixed precision measured")
    row("bf16_min_cosine", f"lowest cosine similarity between an image's bf16 and fp32 embedding ({r.get('bf16_images')} images)")
    row("bf16_min_cosine_centered", "the same after subtracting the fp32 mean embedding (random-init features are all alike, so this is the stricter test)")
    row("bf16_nonfinite", "images whose bf16 embedding had NaN or inf")
    row("fp32_logreg_accuracy", "5-fold CV accuracy of the logreg head on the fp32 embeddings of the labelled generated images")
    row("bf16_logreg_accuracy_change", "the same on bf16 embeddings, minus fp32")
    row("incremental_cost_ratio", f"seconds of a run after adding 1% new images / seconds of the full run of "
        f"{r.get('incremental_images')} images ({r.get('incremental_precision')}, in-process)")
    row("incremental_full_seconds", "that full run, seconds")
    row("incremental_seconds", "that +1% run, seconds")
    row("incremental_seconds_model_rebuilt", "the same +1% run after emptying the per-process model cache (model build and tracing paid again)")
    row("incremental_cli_seconds", "the +1% run as a fresh `python -m extract` process (TensorFlow import and model build included)")
    def runs(key):
        return ", ".join(f"{v:g}" for v in r.get(key) or []) or "one run"

    row("compare_seconds_12k", "`classify.compare` with TUNE=0 (fixed settings), heads logreg,svm,mlp, 5-fold CV, on synthetic 12,420 x 512 embeddings, every output written; the median of interleaved runs "
        f"({runs('compare_seconds_runs')} s), each a fresh process without TensorFlow (imports before the clock) writing a new OUT")
    row("compare_tuned_seconds_12k", "the same with TUNE=1: every head tuned by 3-fold inner CV inside each of the 5 folds and the final fit (nested), every output written "
        f"({runs('compare_tuned_seconds_runs')} s)")
    row("knn_seconds_12k", "the knn head's cost in a TUNE=0 compare of HEADS=knn on the same vectors: its fit_seconds + "
        f"cv_seconds (whole run {r.get('knn_compare_run_seconds_12k')} s; CV {r.get('knn_cv_12k')}); in the default HEADS only at <= 2 s")
    row("knn_tuned_seconds_12k", "the same with TUNE=1 (k from 10, 20, 50 by 3-fold inner CV in every fit)")
    row("compare_logreg_cv", "its logreg CV accuracy (the synthetic set is made to score 0.85-0.95)")
    row("seed_style_seconds_12k", f"the original design's cost: {r.get('seed_style_formula')}")
    row("seed_style_over_compare", "seed style / compare")
    row("compare_seconds_200k", "`python -m classify compare` (default heads, MEMORY_GB=auto) as a fresh process on synthetic 200,000 x 512 embeddings", " s")
    row("compare_peak_rss_mib_200k", "its peak resident memory (largest process of the run)", " MiB")
    row("audit_seconds_200k", "`python -m classify.audit` (default heads) on the same", " s")
    row("audit_peak_rss_mib_200k", "its peak resident memory (largest process of the run)", " MiB")
    row("svm_gram_fold_seconds", "one CV fold of the svm head (Gram matrix computed once with BLAS), fit + predict")
    row("svm_plain_fold_seconds", "the same fold with plain `SVC(kernel='rbf', gamma='scale')`")
    row("svm_gram_speedup", "plain / Gram")
    row("svm_gram_accuracy_change", "fold accuracy, Gram minus plain")
    row("rss_1x_mib", f"peak resident memory of `python -m extract` on {r.get('rss_images_1x')} images (SIZE={r.get('rss_size')}, fp32)", " MiB")
    row("rss_4x_mib", f"the same on {r.get('rss_images_4x')} images", " MiB")
    row("rss_growth", "4x / 1x")
    row("noop_seconds_200k", f"a `python -m extract` run over {r.get('noop_images')} already-cached images "
        "(listing, stat, reading and checking the cache; nothing computed, nothing written)", " s")
    row("noop_peak_rss_mib_200k", "its peak resident memory", " MiB")
    row("noop_seconds_200k_auto", "the same run with PRECISION=auto, the choice remembered for this "
        "machine in FEATURES/.precision.json (no framework imported)", " s")
    lines.append("")
    from .scale import scale_section

    lines.extend(scale_section())
    if r.get("notes"):
        lines.append("Notes:")
        lines.append("")
        lines.extend(f"- {n}" for n in r["notes"])
        lines.append("")
    return "\n".join(lines)


def write_results(results: dict, json_path: Path, md_path: Path) -> None:
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    previous = Path(md_path).read_text(encoding="utf-8") if Path(md_path).is_file() else ""
    Path(md_path).write_text(markdown(results) + "\n", encoding="utf-8")
    from .backbones import BEGIN, END, replace_section
    from .gpu import BEGIN as GPU_BEGIN, END as GPU_END

    # keep the sections of bench.backbones and bench.gpu
    for begin, end in ((BEGIN, END), (GPU_BEGIN, GPU_END)):
        if begin in previous and end in previous:
            replace_section(Path(md_path), begin + previous.split(begin, 1)[1].split(end, 1)[0] + end,
                            begin, end)
