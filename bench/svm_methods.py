"""The SVM head's two methods side by side: exact Gram matrix vs Nystroem + linear SVM.

Each fit runs in a fresh process, so its peak resident memory is its own. Three data sets:
scikit-learn's digits (1,797 x 64, 10 classes, real), the synthetic embeddings of ``make bench``
(``common.fake_embeddings``: nearly linear) and a "ring" made from them (the label is whether a
2-D projection lies outside its median radius: only a non-linear head can learn it). Each is
split 80/20 with a fixed seed; every fit is StandardScaler + ``GramRBFSVC`` as in the ``svm``
head. The numbers feed the constants of :mod:`classify.budget` and BENCHMARKS.md.

Usage::

    python -m bench.svm_methods [--n 12420] [--components 128,256,512,1024] [--json bench/svm-methods.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np

from . import common

SETS = ("digits", "linear", "ring")

ONE_FIT = """
import json, sys, time
sys.path.insert(0, {root!r})
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from bench.svm_methods import dataset
from classify.heads import GramRBFSVC
X, y = dataset({name!r}, {n})
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
model = make_pipeline(StandardScaler(), GramRBFSVC(method={method!r}, n_components={m}, random_state=0))
t0 = time.perf_counter()
model.fit(Xtr, ytr)
fit = time.perf_counter() - t0
acc = float((model.predict(Xte) == yte).mean())
print(json.dumps({{"fit_seconds": round(fit, 2), "accuracy": round(acc, 4), "n_train": len(Xtr)}}))
"""


def dataset(name: str, n: int):
    """(X float32, y) of one of ``SETS`` (``n`` rows for the synthetic ones)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X.astype(np.float32), y
    X, y = common.fake_embeddings(n, seed=1, sep=2.6 if name == "linear" else 0.0)
    if name == "ring":
        P = (X - X.mean(0)) @ np.random.default_rng(0).normal(size=(X.shape[1], 2))
        r = np.hypot(P[:, 0], P[:, 1])
        y = (r > np.median(r)).astype(int)
    return X, y


def one_fit(name: str, n: int, method: str, m: int) -> dict:
    """Fits once in a child process; returns its seconds, accuracy and peak RSS (MiB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(ONE_FIT.format(root=str(common.ROOT), name=name, n=n, method=method, m=max(m, 1)))
    proc = subprocess.run([sys.executable, "-c", f"import resource, runpy; runpy.run_path({fh.name!r}); "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True, cwd=common.ROOT)
    if proc.returncode:
        return {"method": method, "components": m, "error": proc.stderr[-500:]}
    lines = proc.stdout.strip().splitlines()
    return {"method": method, "components": m if method == "nystroem" else 0, **json.loads(lines[-2]),
            "peak_rss_mib": round(int(lines[-1]) / 1024, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.svm_methods", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12420, help="rows of the synthetic sets")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--components", default="128,256,512,1024", help="Nystroem components to try")
    p.add_argument("--json", default=str(common.ROOT / "bench" / "svm-methods.json"))
    args = p.parse_args(argv)
    sets = []
    for name in args.sets.split(","):
        rows = [one_fit(name, args.n, "exact", 0)]
        rows += [one_fit(name, args.n, "nystroem", int(m)) for m in args.components.split(",") if m]
        for r in rows:
            print(name, json.dumps(r), flush=True)
        label = "digits 1,797 x 64" if name == "digits" else f"{name} {args.n:,} x 512"
        sets.append({"name": label, "rows": rows})
    with open(args.json, "w") as fh:
        json.dump({"n": args.n, "sets": sets}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
