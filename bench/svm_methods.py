"""The SVM head's two methods side by side: exact Gram matrix vs Nystroem + linear SVM.

Each fit runs in a fresh process, so its peak resident memory is its own. The data are the
synthetic embeddings of ``make bench`` (``suite.fake_embeddings``), split 80/20; every fit is
StandardScaler + ``GramRBFSVC`` as in the ``svm`` head. The numbers feed the constants of
:mod:`classify.budget` and the accuracy table of BENCHMARKS.md.

Usage::

    python -m bench.svm_methods [--n 12420] [--components 128,256,512,1024] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

from . import suite

ONE_FIT = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from bench import suite
from classify.heads import GramRBFSVC
X, y = suite.fake_embeddings({n}, dim={dim}, seed=1)
cut = int(0.8 * len(X))
model = make_pipeline(StandardScaler(), GramRBFSVC(method={method!r}, n_components={m} or 1, random_state=0))
t0 = time.perf_counter()
model.fit(X[:cut], y[:cut])
fit = time.perf_counter() - t0
acc = float((model.predict(X[cut:]) == y[cut:]).mean())
print(json.dumps({{"fit_seconds": round(fit, 2), "accuracy": round(acc, 4), "n_train": cut}}))
"""


def one_fit(n: int, dim: int, method: str, m: int) -> dict:
    """Fits once in a child process; returns its seconds, accuracy and peak RSS (MiB)."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(ONE_FIT.format(root=str(suite.ROOT), n=n, dim=dim, method=method, m=m))
    out = tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False)
    cmd = [sys.executable, "-c", f"import runpy,sys; sys.stdout=open({out.name!r},'w'); "
                                 f"runpy.run_path({fh.name!r})"]
    mib, seconds, rc = suite.child_peak_rss(cmd)
    if rc:
        return {"method": method, "components": m, "error": f"exit code {rc}"}
    res = json.loads(open(out.name).read().strip().splitlines()[-1])
    return {"method": method, "components": m if method == "nystroem" else 0, **res,
            "peak_rss_mib": round(mib, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.svm_methods", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12420, help="rows (80%% train, 20%% evaluated)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--components", default="128,256,512,1024", help="Nystroem components to try")
    p.add_argument("--no-exact", action="store_true", help="skip the exact fit (too large)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = [] if args.no_exact else [one_fit(args.n, args.dim, "exact", 0)]
    for m in (int(v) for v in args.components.split(",") if v):
        rows.append(one_fit(args.n, args.dim, "nystroem", m))
    for r in rows:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "dim": args.dim, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
