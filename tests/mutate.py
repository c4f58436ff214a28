"""Re-runs the planted bugs of tests/MUTATIONS.md: each must make its named test fail.

Each mutation is a text patch (one exact snippet of one source file replaced by another). The
project's files (tracked and untracked, not ignored) are copied once to a temporary folder; for
each mutation the file is patched there, the named tests run with pytest, and the file restored.
A mutation is *caught* when the tests fail. The same tests must pass on the unpatched copy
(``--clean`` checks that first).

Usage (from the project root)::

    .venv/bin/python tests/mutate.py            # every mutation, after a clean run
    .venv/bin/python tests/mutate.py gif crop   # only those whose name contains a word
    .venv/bin/python tests/mutate.py --list     # names, files and tests

Exit status: 0 when every selected mutation is caught and the clean run passes, else 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name, file, the snippet of the code, the mutated snippet, the tests that must catch it
MUTATIONS: list[tuple[str, str, str, str, list[str]]] = [
    ("predict-cached-first", "classify/predict.py",
     "X = np.stack([vectors[i] for i in ok]).astype(np.float32)",
     "X = np.stack(list(vectors.values())).astype(np.float32)",
     ["tests/test_predict_order.py"]),
    ("wilson-93", "classify/stats.py",
     "z = stats.norm.ppf(0.5 + confidence / 2)",
     "z = stats.norm.ppf(0.5 + (confidence - 0.02) / 2)",
     ["tests/test_stats.py::test_wilson_interval_coverage_is_95_percent_neither_less_nor_more"]),
    ("wilson-twice-as-wide", "classify/stats.py",
     "half = z * math.sqrt(",
     "half = 2 * z * math.sqrt(",
     ["tests/test_stats.py::test_wilson_interval_coverage_is_95_percent_neither_less_nor_more"]),
    ("t-interval-twice-as-wide", "classify/stats.py",
     "half = stats.t.ppf(0.5 + confidence / 2, len(scores) - 1) * sd",
     "half = 2 * stats.t.ppf(0.5 + confidence / 2, len(scores) - 1) * sd",
     ["tests/test_stats.py::test_corrected_t_interval_covers_the_true_accuracy"]),
    ("paired-t-always-1", "classify/stats.py",
     "if len(d) < 2 or not d.any():",
     "if True:",
     ["tests/test_stats.py::test_corrected_paired_t_finds_a_clearly_better_head"]),
    ("squash-not-crop", "extract/load.py",
     "Image.BILINEAR, box=(left, top, left + side, top + side))",
     "Image.BILINEAR)",
     ["tests/test_decode.py"]),
    ("gif-last-frame", "extract/load.py",
     "        img.load()\n",
     "        if getattr(img, 'n_frames', 1) > 1:\n            img.seek(img.n_frames - 1)\n"
     "        img.load()\n",
     ["tests/test_decode.py"]),
    ("precision-ignored", "extract/model.py",
     "keras.mixed_precision.set_global_policy(PRECISIONS[settings.precision])",
     "keras.mixed_precision.set_global_policy('float32')",
     ["tests/test_model_build.py"]),
    ("weights-file-seeded-init", "extract/model.py",
     "        return factory(weights=settings.weights, **kwargs)\n",
     "        from .randinit import set_numpy_weights\n"
     "        open(settings.weights, 'rb').close()\n"
     "        model = factory(weights=None, **kwargs)\n"
     "        set_numpy_weights(model, INIT_SEED)\n"
     "        return model\n",
     ["tests/test_model_build.py"]),
    ("no-val-valid-fallback", "classify/data.py",
     "return next((s for s in EVAL_SPLITS if s in splits), None)",
     "return 'test' if 'test' in splits else None",
     ["tests/test_splits.py::test_without_test_folder_val_or_valid_is_evaluated"]),
    ("dup-cache-never-read", "classify/dups.py",
     "    if path.is_file():\n        try:\n            with np.load(path",
     "    if False:\n        try:\n            with np.load(path",
     ["tests/test_dup_cache.py"]),
    ("dup-cache-ignores-embeddings", "classify/dups.py",
     "    h.update(memoryview(X).cast(\"B\"))\n",
     "",
     ["tests/test_dup_cache.py"]),
    ("mlp-early-stopping-off-by-one", "classify/heads/mlp.py",
     "early = n >= EARLY_STOPPING_FROM",
     "early = n > EARLY_STOPPING_FROM",
     ["tests/test_early_stopping.py"]),
    ("legacy-cache-ignored", "extract/cache.py",
     "    if (features / key / \"manifest.csv\").is_file():\n        found.append(features / key)\n",
     "",
     ["tests/test_guarantees.py::test_a_cache_of_the_layout_before_input_folders_is_reused"]),
    ("out-may-be-home", "classify/outdir.py",
     " or full == Path.home().resolve()",
     "",
     ["tests/test_guarantees.py::test_out_may_not_be_the_home_folder_or_the_root"]),
    ("make-clean-deletes-out-itself", "Makefile",
     'rm -rf -- "$${o:?OUT is empty}"/* "$$o"/.dups',
     'rm -rf -- "$${o:?OUT is empty}"',
     ["tests/test_guarantees.py::test_make_clean_deletes_what_is_in_out_and_nothing_else"]),
]


def project_files() -> list[str]:
    """Tracked and untracked files that git does not ignore (what the tests need)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def copy_project(dest: Path) -> None:
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    if (ROOT / ".venv").exists():
        os.symlink((ROOT / ".venv").resolve(), dest / ".venv")


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[bool, str]:
    """Runs ``tests`` in ``copy``; returns (passed, the last lines of pytest's output)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        res = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    except subprocess.TimeoutExpired:
        return False, "timed out"
    tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
    return res.returncode == 0, tail[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("words", nargs="*", help="run only mutations whose name contains one of these")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-clean", action="store_true", help="skip the run on the unpatched code")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.words or any(w in m[0] for w in args.words)]
    if args.list:
        for name, file, _, _, tests in chosen:
            print(f"{name:32} {file:22} {' '.join(tests)}")
        return 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        copy = Path(tmp)
        copy_project(copy)
        if not args.no_clean:
            tests = sorted({t for m in chosen for t in m[4]})
            passed, tail = run_tests(copy, tests, args.timeout)
            print(f"{'(unpatched)':32} {'passes' if passed else 'FAILS'}  {tail}", flush=True)
            ok &= passed
        for name, file, old, new, tests in chosen:
            path = copy / file
            original = path.read_text(encoding="utf-8")
            if original.count(old) != 1:
                print(f"{name:32} SNIPPET NOT FOUND ONCE in {file}: the code moved; update the patch")
                ok = False
                continue
            path.write_text(original.replace(old, new), encoding="utf-8")
            try:
                passed, tail = run_tests(copy, tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            print(f"{name:32} {'NOT CAUGHT' if passed else 'caught'}  {tail}", flush=True)
            ok &= not passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
