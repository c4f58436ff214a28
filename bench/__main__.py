"""``make bench``: how close extraction runs to the model's own speed, and what stage 2 costs.

Writes ``bench/results.json`` and ``BENCHMARKS.md`` (both regenerated each run). Runs with
random-init weights on JPEG files generated under ``bench/work/`` (git-ignored), in about
10 minutes on a 2-core CPU; ``--quick`` is a scaled-down smoke run of every measurement (about
a minute; its numbers are not meaningful, its keys are the same).

Usage::

    python -m bench [--quick] [--json bench/results.json] [--md BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import suite

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FULL = dict(size=224, batch=32, rounds=3, e2e_images=128, model_batches=4,
            incremental_images=1000, incremental_precision="bf16",
            rss_size=64, rss_images=250, compare_n=12420, svm_n=12420, noop_images=200_000,
            scale_n=200_000)
QUICK = dict(size=64, batch=16, rounds=2, e2e_images=32, model_batches=2,
             incremental_images=200, incremental_precision="bf16",
             rss_size=32, rss_images=40, compare_n=2000, svm_n=2000, noop_images=5000, scale_n=4000)
IMAGE_SHAPE = (240, 320)  # (h, w) of the generated JPEG files


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scaled-down smoke run (about a minute)")
    p.add_argument("--json", default=str(suite.ROOT / "bench" / "results.json"), help="results file")
    p.add_argument("--md", default=str(suite.ROOT / "BENCHMARKS.md"), help="the readable table")
    p.add_argument("--work", default=str(suite.ROOT / "bench" / "work"), help="scratch folder (deleted first)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="precision of the headline extract_* numbers (both are always measured)")
    p.add_argument("--skip-plain-svc", action="store_true", help="do not time plain SVC against the Gram-matrix SVC")
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def derive(raw: dict, headline: str = "fp32") -> dict:
    """Turns the raw measurements into the results' ratios (pure; tested).

    Args:
        raw: ``rounds`` (a list of {"fp32": {"model_only", "e2e"}, "bf16": {...}}),
            ``incremental_full_seconds``, ``incremental_seconds``, ``compare_seconds``,
            ``compare_n_train``, ``rss_1x_mib``, ``rss_4x_mib``, and optional extras that are
            copied through.
        headline: which precision the ``extract_*`` keys report.
    """
    med = statistics.median
    rounds = raw["rounds"]
    out = {k: v for k, v in raw.items() if k != "rounds"}
    for p in ("fp32", "bf16"):
        out[f"{p}_model_only_ips"] = med(r[p]["model_only"] for r in rounds)
        out[f"{p}_end_to_end_ips"] = med(r[p]["e2e"] for r in rounds)
        out[f"{p}_efficiency"] = med(r[p]["e2e"] / r[p]["model_only"] for r in rounds)
    out["extract_model_only_ips"] = out[f"{headline}_model_only_ips"]
    out["extract_end_to_end_ips"] = out[f"{headline}_end_to_end_ips"]
    out["extract_efficiency"] = out[f"{headline}_efficiency"]
    out["bf16_speedup"] = med(r["bf16"]["e2e"] / r["fp32"]["e2e"] for r in rounds)
    out["bf16_model_only_speedup"] = med(r["bf16"]["model_only"] / r["fp32"]["model_only"] for r in rounds)
    if raw.get("gflop_per_image"):
        for p in ("fp32", "bf16"):
            out[f"{p}_model_gflops"] = out[f"{p}_model_only_ips"] * raw["gflop_per_image"]
    out["incremental_cost_ratio"] = raw["incremental_seconds"] / raw["incremental_full_seconds"]
    n_train = raw["compare_n_train"]
    out["seed_style_seconds_12k"] = 10 * n_train / out["fp32_model_only_ips"]
    out["seed_style_formula"] = (f"10 epochs x {n_train:,} training images "
                                 f"({raw.get('compare_n', 12420):,} x 0.8) / "
                                 f"fp32 model-only images/s ({out['fp32_model_only_ips']:.2f})")
    out["seed_style_over_compare"] = out["seed_style_seconds_12k"] / raw["compare_seconds"]
    out["compare_seconds_12k"] = raw["compare_seconds"]
    out["compare_tuned_seconds_12k"] = raw.get("compare_tuned_seconds")
    out["rss_growth"] = raw["rss_4x_mib"] / raw["rss_1x_mib"]
    out["rounds"] = rounds
    return out


def main(argv=None) -> int:
    args = parse(argv)
    cfg = dict(QUICK if args.quick else FULL)
    t_all = time.perf_counter()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sys.path.insert(0, str(suite.ROOT))
    machine = suite.machine()
    notes = []
    raw: dict = {}

    from extract._tf import tensorflow
    from extract.model import Settings

    tf = tensorflow()
    size, batch = cfg["size"], cfg["batch"]
    S = {p: Settings(weights="none", size=size, precision=p) for p in ("fp32", "bf16")}

    # ---- inputs
    say(f"writing generated JPEG files under {work}")
    n_e2e = cfg["e2e_images"]
    pool = work / "pool"
    suite.write_images(pool, n_e2e * cfg["rounds"], shape=IMAGE_SHAPE, seed=1)
    rounds_in = []
    for r in range(cfg["rounds"]):
        d = work / f"in_e2e_{r}"
        files = sorted(pool.rglob("*.jpg"))[r * n_e2e:(r + 1) * n_e2e]
        for f in files:
            q = d / f.relative_to(pool)
            q.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, q)
            except OSError:
                shutil.copy2(f, q)
        rounds_in.append(d)
    warm_in = suite.link_tree(pool, work / "in_warm", batch)
    images = suite.decoded_batch([str(p) for p in sorted(pool.rglob("*.jpg"))], size, batch)

    raw["sgemm_gflops"] = round(suite.sgemm_gflops(), 1)
    raw["gflop_per_image"] = round(suite.vgg16_gflop_per_image(size), 3)
    say(f"numpy sgemm: {raw['sgemm_gflops']} GFLOP/s; VGG16 at {size} px: {raw['gflop_per_image']} GFLOP per image")

    # ---- warm-up: import, build and trace once per precision (reported, not in the ratios)
    for p in ("fp32", "bf16"):
        t0 = time.perf_counter()
        _, summ = suite.end_to_end(warm_in, work / f"features_warm_{p}", S[p], batch)
        raw[f"{p}_first_run_seconds"] = round(time.perf_counter() - t0, 2)
        say(f"warm-up {p}: {summ.computed} images in {raw[f'{p}_first_run_seconds']} s (model build and tracing included)")

    # ---- interleaved rounds: model-only and end-to-end, fp32 and bf16
    rounds = []
    for r, d in enumerate(rounds_in):
        entry = {}
        for p in ("fp32", "bf16"):
            mo = suite.model_only_ips(S[p], images, cfg["model_batches"])
            e2e, summ = suite.end_to_end(d, work / f"features_e2e_{p}_{r}", S[p], batch)
            if summ.rejected:
                notes.append(f"{p} round {r}: {summ.rejected} images rejected (NaN/inf or unreadable)")
            entry[p] = {"model_only": round(mo, 3), "e2e": round(e2e, 3)}
            say(f"round {r} {p}: model-only {mo:.2f} img/s, end-to-end {e2e:.2f} img/s "
                f"(efficiency {e2e / mo:.3f})")
        rounds.append(entry)
    raw["rounds"] = rounds

    # ---- PRECISION=auto: what the calibration picks, against the best fixed precision measured
    from extract import precision as auto
    from extract.backend import device_name

    calib = auto.calibrate(S["fp32"], suite.sample_uint8(pool, size, auto.CALIBRATION_IMAGES),
                           device_name(), log=say)
    raw["auto_choice"] = calib["chosen"]
    raw["auto_calibration_seconds"] = calib["seconds"]
    raw["auto_calibration"] = calib
    best = max(("fp32", "bf16"), key=lambda p: statistics.median(r[p]["model_only"] for r in rounds))
    raw["auto_vs_best"] = round(statistics.median(r[calib["chosen"]]["model_only"] for r in rounds)
                                / statistics.median(r[best]["model_only"] for r in rounds), 4)
    say(f"PRECISION=auto chose {calib['chosen']} in {calib['seconds']} s; the best fixed precision "
        f"measured was {best}: auto_vs_best {raw['auto_vs_best']}")

    # ---- bf16 vs fp32 embeddings of the same labelled images
    emb = {p: [] for p in S}
    labels, n_bad = [], 0
    for r in range(cfg["rounds"]):
        got = {p: suite.aligned_embeddings(work / f"features_e2e_{p}_{r}", S[p]) for p in S}
        common = sorted(set(got["fp32"][1]) & set(got["bf16"][1]))
        n_bad += len(got["fp32"][1]) - len(got["bf16"][1])
        for p in S:
            idx = {path: i for i, path in enumerate(got[p][1])}
            emb[p].append(got[p][0][[idx[c] for c in common]])
        labels += [c.split("/", 1)[0] for c in common]
    e32, e16 = np.concatenate(emb["fp32"]), np.concatenate(emb["bf16"])
    y = np.array(labels)
    raw["bf16_images"] = int(len(y))
    raw["bf16_nonfinite"] = int(n_bad + (~np.isfinite(e16).all(1)).sum())
    raw["bf16_min_cosine"] = float(suite.cosines(e32, e16).min())
    mu = e32.mean(0)
    raw["bf16_min_cosine_centered"] = float(suite.cosines(e32 - mu, e16 - mu).min())
    acc32 = suite.logreg_cv_accuracy(e32, y)
    acc16 = suite.logreg_cv_accuracy(e16, y)
    raw["fp32_logreg_accuracy"] = round(acc32, 4)
    raw["bf16_logreg_accuracy"] = round(acc16, 4)
    raw["bf16_logreg_accuracy_change"] = round(acc16 - acc32, 4)
    say(f"bf16 vs fp32 on {len(y)} images: min cosine {raw['bf16_min_cosine']:.5f} "
        f"(centred {raw['bf16_min_cosine_centered']:.5f}), logreg {acc32:.3f} -> {acc16:.3f}")

    # ---- incremental: full run, then +1% new images, in this process
    ip = cfg["incremental_precision"]
    n_inc = cfg["incremental_images"]
    inc_in, inc_feat = work / "in_incremental", work / "features_incremental"
    suite.write_images(inc_in, n_inc, shape=IMAGE_SHAPE, seed=2)
    t0 = time.perf_counter()
    _, full = suite.end_to_end(inc_in, inc_feat, S[ip], batch)
    raw["incremental_full_seconds"] = round(full.seconds, 3)
    n_new = max(1, n_inc // 100)
    suite.write_images(inc_in, n_new, start=n_inc, shape=IMAGE_SHAPE, seed=2)
    from extract import extract_features

    inc = extract_features(str(inc_in), str(inc_feat), S[ip], batch=batch, progress=False,
                           log=lambda *a, **k: None)
    raw["incremental_seconds"] = round(inc.seconds, 3)
    raw["incremental_images"] = n_inc
    raw["incremental_new_images"] = inc.computed
    raw["incremental_precision"] = ip
    say(f"incremental ({ip}): full {n_inc} images {full.seconds:.1f} s, +{inc.computed} images "
        f"{inc.seconds:.2f} s (reused {inc.reused})")
    # the same +1% without the per-process model cache (extract.backend.embedder): build + trace again
    import extract.backend

    extract.backend._EMBEDDERS.clear()
    suite.write_images(inc_in, n_new, start=n_inc + n_new, shape=IMAGE_SHAPE, seed=2)
    cold = extract_features(str(inc_in), str(inc_feat), S[ip], batch=batch, progress=False,
                            log=lambda *a, **k: None)
    raw["incremental_seconds_model_rebuilt"] = round(cold.seconds, 3)
    say(f"incremental with the model built again: {cold.seconds:.2f} s")
    # the same +1% as a fresh `python -m extract` process: what `make features` costs
    suite.write_images(inc_in, n_new, start=n_inc + 2 * n_new, shape=IMAGE_SHAPE, seed=2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cli = [sys.executable, "-m", "extract", "--in", str(inc_in), "--features", str(inc_feat),
           "--weights", "none", "--size", str(size), "--batch", str(batch), "--precision", ip, "--quiet"]
    _, cli_seconds, rc = suite.child_peak_rss(cli, env)
    raw["incremental_cli_seconds"] = round(cli_seconds, 2)
    startup = cli_seconds - inc.seconds
    raw["incremental_cost_ratio_cli_estimate"] = round(cli_seconds / (full.seconds + startup), 4)
    say(f"incremental as a fresh process: {cli_seconds:.1f} s (rc {rc})")

    # ---- peak memory at 1x and 4x the images (fresh processes, small SIZE)
    n1 = cfg["rss_images"]
    rss_src = work / "in_rss_src"
    suite.write_images(rss_src, 4 * n1, shape=IMAGE_SHAPE, seed=3)
    for mult in (1, 4):
        d = suite.link_tree(rss_src, work / f"in_rss_{mult}x", mult * n1)
        cmd = [sys.executable, "-m", "extract", "--in", str(d), "--features", str(work / f"features_rss_{mult}x"),
               "--weights", "none", "--size", str(cfg["rss_size"]), "--batch", str(batch),
               "--precision", "fp32", "--quiet"]
        mib, seconds, rc = suite.child_peak_rss(cmd, env)
        raw[f"rss_{mult}x_mib"] = round(mib, 1)
        say(f"rss {mult}x ({mult * n1} images, SIZE={cfg['rss_size']}): {mib:.0f} MiB, {seconds:.1f} s (rc {rc})")
    raw["rss_images_1x"], raw["rss_images_4x"], raw["rss_size"] = n1, 4 * n1, cfg["rss_size"]

    # ---- a run that finds everything cached, over many images and a quarter as many (fresh
    # processes): the difference gives the cost per image without the interpreter's fixed cost
    noop, noop_auto = {}, None
    for n_noop in (cfg["noop_images"] // 4, cfg["noop_images"]):
        say(f"writing {n_noop} files and their cache for the no-op run")
        full_size = n_noop == cfg["noop_images"]
        runs = suite.measure_noop(work, n_noop, env, ("fp32", "auto") if full_size else ("fp32",))
        noop[n_noop] = runs["fp32"]
        noop_auto = runs.get("auto", noop_auto)
        for precision, (mib_p, sec_p, rc_p) in runs.items():
            say(f"no-op over {n_noop} cached images, PRECISION={precision}: {sec_p:.2f} s, "
                f"{mib_p:.0f} MiB peak (rc {rc_p})")
            if rc_p:
                notes.append(f"the no-op run over {n_noop} images with PRECISION={precision} exited {rc_p}")
    (small, (mib_s, sec_s, _)), (n_noop, (mib, seconds, _)) = sorted(noop.items())
    raw["noop_seconds_200k"], raw["noop_peak_rss_mib_200k"] = round(seconds, 2), round(mib, 1)
    raw["noop_seconds_200k_auto"] = round(noop_auto[1], 2)
    raw["noop_peak_rss_mib_200k_auto"] = round(noop_auto[0], 1)
    raw["noop_images"] = n_noop
    raw["noop_seconds_per_image_us"] = round((seconds - sec_s) / (n_noop - small) * 1e6, 2)
    raw["noop_kib_per_image"] = round((mib - mib_s) / (n_noop - small) * 1024, 3)
    raw["noop_seconds_1m_estimate"] = round(seconds + (1_000_000 - n_noop) * raw["noop_seconds_per_image_us"] / 1e6, 1)
    raw["noop_peak_rss_mib_1m_estimate"] = round(mib + (1_000_000 - n_noop) * raw["noop_kib_per_image"] / 1024)

    # ---- stage 2 on synthetic 12,420 x 512 embeddings (each run a fresh process, as make compare)
    X, yy = suite.fake_embeddings(cfg["compare_n"])
    fake = work / "fake12k"
    settings = suite.write_fake_cache(fake / "features", X, yy)
    runs: dict = {"0": [], "1": []}
    tables: dict = {}  # the same numbers every round (seeded); only the time varies
    for k in range(cfg["rounds"]):  # interleaved, as the extraction rounds: the machine drifts
        for tune in runs:  # a new OUT each time: none reuses another's duplicate search (OUT/.dups)
            seconds, tables[tune] = suite.compare_in_child(fake / "features", fake / f"out-tune{tune}-{k}",
                                                           settings, tune=tune)
            runs[tune].append(round(seconds, 2))
    table, tuned = tables["0"], tables["1"]
    raw["compare_seconds"] = statistics.median(runs["0"])
    raw["compare_tuned_seconds"] = statistics.median(runs["1"])
    raw["compare_seconds_runs"], raw["compare_tuned_seconds_runs"] = runs["0"], runs["1"]
    raw.update(suite.knn_seconds(fake / "features", fake / "out-knn", settings))
    raw["compare_tuned_heads"] = {h: {"cv_mean": round(float(r["cv_mean"]), 4), "accuracy": round(float(r["accuracy"]), 4),
                                      "params": r["params"]} for h, r in tuned.set_index("head").iterrows()}
    raw["compare_n"] = cfg["compare_n"]
    raw["compare_n_train"] = int(table["n_train"].iloc[0])
    tab = table.set_index("head")
    raw["compare_logreg_cv"] = round(float(tab.loc["logreg", "cv_mean"]), 4)
    raw["compare_heads"] = {h: {"cv_mean": round(float(tab.loc[h, "cv_mean"]), 4),
                                "accuracy": round(float(tab.loc[h, "accuracy"]), 4),
                                "cv_seconds": float(tab.loc[h, "cv_seconds"]),
                                "fit_seconds": float(tab.loc[h, "fit_seconds"])} for h in tab.index}
    say(f"compare on {cfg['compare_n']} x 512: {raw['compare_seconds']} s (TUNE=0), "
        f"{raw['compare_tuned_seconds']} s (tuned); "
        + ", ".join(f"{h} cv {v['cv_mean']:.3f}" for h, v in raw["compare_heads"].items()))

    # ---- stage 2 at scale: compare and audit as fresh processes on N x 512 (default heads)
    from .scale import keys, run_scale

    scale = run_scale(cfg["scale_n"], work / "scale", say=say)
    raw.update(keys(scale, "200k"))
    raw["scale_200k"] = {k: scale[k] for k in ("n", "compare", "audit")}

    # ---- the svm head: Gram matrix vs plain SVC on one CV fold
    if not args.skip_plain_svc:
        from sklearn.base import clone
        from sklearn.metrics import accuracy_score
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        from classify.heads import make_heads

        n_tr = int(cfg["svm_n"] * 0.8)
        Xs, ys = X[:n_tr], yy[:n_tr]
        tr, te = next(StratifiedKFold(5, shuffle=True, random_state=42).split(Xs, ys))
        res = {}
        for name, model in (("gram", clone(make_heads(42)["svm"])),
                            ("plain", make_pipeline(StandardScaler(), SVC(kernel="rbf", gamma="scale",
                                                                          C=1.0, random_state=42)))):
            t0 = time.perf_counter()
            model.fit(Xs[tr], ys[tr])
            acc = accuracy_score(ys[te], model.predict(Xs[te]))
            res[name] = (time.perf_counter() - t0, acc)
        raw["svm_gram_fold_seconds"] = round(res["gram"][0], 2)
        raw["svm_plain_fold_seconds"] = round(res["plain"][0], 2)
        raw["svm_gram_speedup"] = round(res["plain"][0] / res["gram"][0], 2)
        raw["svm_gram_accuracy_change"] = round(res["gram"][1] - res["plain"][1], 4)
        raw["svm_fold_train_images"] = int(len(tr))
        say(f"svm fold ({len(tr)} train): Gram {res['gram'][0]:.1f} s acc {res['gram'][1]:.4f}, "
            f"plain {res['plain'][0]:.1f} s acc {res['plain'][1]:.4f}")

    results = derive(raw, headline=args.precision)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.quick:
        notes.insert(0, "QUICK MODE: a scaled-down smoke run; the numbers below are not comparable "
                        "with the targets (SIZE, images and embeddings are all smaller).")
    notes += [
        f"Scaled to fit about 10 minutes on 2 cores: end-to-end rounds of {n_e2e} images, model-only "
        f"medians of {cfg['model_batches']} batches, {cfg['rounds']} rounds; the memory test uses "
        f"SIZE={cfg['rss_size']} ({n1} vs {4 * n1} images); the incremental test runs in "
        f"{ip} on {n_inc} images.",
        "End-to-end runs are in-process after a warm-up run per precision, so the TensorFlow import, "
        "model build and first tracing (the *_first_run_seconds keys) are not in them; "
        f"a fresh `python -m extract` adds them: the +1% run took {raw['incremental_cli_seconds']} s "
        f"that way (estimated CLI ratio {raw['incremental_cost_ratio_cli_estimate']}).",
        f"No-op runs at {small:,} and {n_noop:,} cached images: {sec_s:.2f} s / {mib_s:.0f} MiB and "
        f"{raw['noop_seconds_200k']:.2f} s / {raw['noop_peak_rss_mib_200k']:.0f} MiB (with "
        f"PRECISION=auto {raw['noop_seconds_200k_auto']:.2f} s / "
        f"{raw['noop_peak_rss_mib_200k_auto']:.0f} MiB); the difference costs {raw['noop_seconds_per_image_us']} us and "
        f"{raw['noop_kib_per_image']} KiB per image, so 1,000,000 cached images should take about "
        f"{raw['noop_seconds_1m_estimate']} s and {raw['noop_peak_rss_mib_1m_estimate']:,} MiB. Peaks "
        "are each child's own VmHWM (bench/peak.py).",
        "Random-init (WEIGHTS=none) embeddings are all alike (cosines between different images near "
        "1), so bf16_min_cosine is easy to meet; bf16_min_cosine_centered is the stricter check.",
        "Tried and not used, measured during development on this machine (model-only, "
        "batch 32, 224 px, the same load in each pair): XLA (`jit_compile=True`) ran fp32 at "
        "0.25-0.8x and bf16 at 0.25-0.4x of TensorFlow's oneDNN kernels. Batch 8, 16, 32 and 64 "
        "gave the same images/s within 3%, so BATCH stays 32.",
    ]
    results.update({
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench --quick" if args.quick else "make bench",
        "machine": machine,
        "versions": suite.versions(),
        "settings": {**cfg, "precision": args.precision, "image_shape": list(IMAGE_SHAPE),
                     "weights": "none", "backbone": "vgg16", "pooling": "avg",
                     "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                     "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()},
        "targets": {k: f"{rule} {bound}" for k, rule, bound in suite.TARGETS},
        "notes": notes,
        "total_seconds": round(time.perf_counter() - t_all, 1),
    })
    results["verdicts"] = {k: suite.verdict(results, k, rule, bound) for k, rule, bound in suite.TARGETS}
    missing = [k for k in suite.REQUIRED_KEYS if k not in results]
    suite.write_results(results, Path(args.json), Path(args.md))
    say(f"wrote {args.json} and {args.md} in {results['total_seconds']:.0f} s")
    print(suite.markdown(results))
    if missing:
        print(f"error: results lack {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
