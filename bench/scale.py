"""Stage 2 at scale: ``make compare`` and ``make audit`` (default heads) on synthetic N x 512 vectors.

Each command runs as a fresh process on a synthetic cache (``common.fake_embeddings``, written
with ``common.write_fake_cache``); its wall time and peak memory are measured from outside:
``peak_rss_mib`` is the largest resident size of any one process of the run (the command or one
of its joblib workers), sampled from /proc every 0.2 s (the command's own rusage is kept as
``rusage_maxrss_mib``: it also counts this process's pages shared between fork and exec);
``tree_rss_mib`` the largest sum over the process tree at one instant (memory-mapped
embeddings shared by the workers are counted once per process there, so it overstates).

Usage::

    python -m bench.scale                  # 200,000 x 512 -> compare_seconds_200k, ... (in make bench)
    python -m bench.scale --scale 1m       # the one-off at 1,000,000 x 512 (long: run it alone)
    python -m bench.scale --n 100000 --prlimit-as 12000000000   # the issue's 12 GB check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import common

SCALES = {"200k": 200_000, "1m": 1_000_000}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, IndexError, ValueError):
        return 0.0


def measure(cmd: list[str], env=None, log_path: Path | None = None) -> dict:
    """Runs ``cmd``; returns seconds, exit code, peak single-process and tree RSS (MiB)."""
    t0 = time.perf_counter()
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak = {"one": 0.0, "tree": 0.0}
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            sizes = [_rss_mib(p) for p in _tree(proc.pid)]
            peak["one"] = max(peak["one"], max(sizes, default=0.0))
            peak["tree"] = max(peak["tree"], sum(sizes))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    thread.join()
    if log_path:
        out.close()
    return {"seconds": round(time.perf_counter() - t0, 1), "rc": os.waitstatus_to_exitcode(status),
            "peak_rss_mib": round(peak["one"], 1), "tree_rss_mib": round(peak["tree"], 1),
            # ru_maxrss also counts the pages the child shared with this process between fork
            # and exec, so it is an upper bound only
            "rusage_maxrss_mib": round(usage.ru_maxrss / 1024.0, 1)}


def run_scale(n: int, work: Path, prlimit_as: int | None = None, memory_gb: str = "auto",
              say=print) -> dict:
    """Writes the synthetic cache of n rows and measures compare then audit on it.

    Returns:
        {"compare": {...}, "audit": {...}, "n": n, "memory_plan": ...} with the keys of
        :func:`measure` and each command's SVM method (from run.json / summary.json).
    """
    features, out = work / "features", work / "out"
    X, y = common.fake_embeddings(n)
    settings = common.write_fake_cache(features, X, y)
    del X
    flags = ["--features", str(features), "--dataset", common.FAKE_DATASET, "--out", str(out),
             "--weights", "none", "--size", str(settings.size), "--memory-gb", memory_gb]
    prefix = ["prlimit", f"--as={prlimit_as}"] if prlimit_as else []
    env = dict(os.environ, PYTHONPATH=str(common.ROOT), PYTHONUNBUFFERED="1")
    res: dict = {"n": n, "dim": 512, "prlimit_as": prlimit_as, "memory_gb": memory_gb}
    for name, module in (("compare", ["classify", "compare"]), ("audit", ["classify.audit"])):
        say(f"{name} on {n:,} x 512 ...")
        res[name] = measure([*prefix, sys.executable, "-m", *module, *flags], env,
                            log_path=work / f"{name}.log")
        res[name]["log_tail"] = (work / f"{name}.log").read_text(errors="replace").splitlines()[-12:]
        say(f"{name}: {res[name]['seconds']} s, peak {res[name]['peak_rss_mib']:.0f} MiB, rc {res[name]['rc']}")
    if (out / "run.json").is_file():
        res["compare"]["memory_plan"] = json.loads((out / "run.json").read_text())["memory_plan"]
    if (out / "audit" / "summary.json").is_file():
        summary = json.loads((out / "audit" / "summary.json").read_text())
        res["audit"]["memory_plan"] = summary.get("memory_plan")
        res["audit"]["dup_search"] = summary["duplicates"].get("search")
        res["audit"]["scores"] = summary.get("scores")
    return res


def keys(res: dict, tag: str) -> dict:
    """The headline keys: ``compare_seconds_<tag>``, ``compare_peak_rss_mib_<tag>``, audit alike."""
    return {f"{name}_{what}_{tag}": res[name][src] for name in ("compare", "audit")
            for what, src in (("seconds", "seconds"), ("peak_rss_mib", "peak_rss_mib"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="200k")
    p.add_argument("--n", type=int, default=None, help="rows (overrides --scale)")
    p.add_argument("--prlimit-as", type=int, default=None, help="run under prlimit --as=BYTES")
    p.add_argument("--memory-gb", default="auto", help="MEMORY_GB passed to both commands")
    p.add_argument("--work", default=str(common.ROOT / "bench" / "work" / "scale"))
    p.add_argument("--json", default=None, help="write the results here (default: bench/scale-<tag>.json)")
    args = p.parse_args(argv)
    n = args.n or SCALES[args.scale]
    tag = args.scale if args.n is None else f"{n // 1000}k"
    work = Path(args.work) / tag
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = run_scale(n, work, args.prlimit_as, args.memory_gb,
                    say=lambda m: print(f"[bench.scale {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    res.update(keys(res, tag))
    res["machine"] = common.machine()
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.json or common.ROOT / "bench" / f"scale-{tag}.json")
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k.endswith(tag)}, indent=2))
    return 0 if res["compare"]["rc"] == 0 and res["audit"]["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


def scale_section(folder: Path | None = None) -> list[str]:
    """The "Stage 2 at scale" section of BENCHMARKS.md, from the ``bench/scale-*.json`` files of
    one-off runs (``python -m bench.scale``) and ``bench/svm-methods.json``; kept across
    ``make bench`` runs, which rewrite the rest of the file."""
    folder = Path(folder or common.ROOT / "bench")
    lines = ["## Stage 2 at scale (issue 14)", "",
             "One-off runs of `python -m bench.scale` (fresh processes, default heads, synthetic "
             "vectors of `make bench`); peak = the largest resident size of any one process of "
             "the run (joblib workers included), tree = the largest sum over the process tree.", "",
             "| rows x dims | command | limit | seconds | peak MiB | tree MiB | SVM method | parallel fits | near-duplicate search | load at end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("scale-*.json"), key=lambda p: json.loads(p.read_text())["n"]):
        r = json.loads(path.read_text())
        limit = f"prlimit --as={r['prlimit_as']:,}" if r.get("prlimit_as") else f"MEMORY_GB={r.get('memory_gb')}"
        for name in ("compare", "audit"):
            c = r.get(name, {})
            plan = c.get("memory_plan") or {}
            method = plan.get("method", "?") + (f" ({plan['components']} components)" if plan.get("components") else "")
            lines.append(f"| {r['n']:,} x {r['dim']} | {name} | {limit} | {c.get('seconds')} (rc {c.get('rc')}) | "
                         f"{c.get('peak_rss_mib')} | {c.get('tree_rss_mib')} | {method} | {plan.get('n_jobs', '?')} | "
                         f"{r.get('audit', {}).get('dup_search', '') if name == 'audit' else ''} | "
                         f"{_load(r)} |")
    methods = folder / "svm-methods.json"
    if methods.is_file():
        m = json.loads(methods.read_text())
        lines += ["", f"SVM head, exact Gram kernel vs Nystroem + LinearSVC (`python -m bench.svm_methods`; "
                      "accuracy on a 20% hold-out, one fit per fresh process):", "",
                  "| data | method | components | accuracy | fit seconds | peak MiB |", "|---|---|---|---|---|---|"]
        for data in m["sets"]:
            for row in data["rows"]:
                lines.append(f"| {data['name']} | {row['method']} | {row.get('components') or ''} | "
                             f"{row.get('accuracy')} | {row.get('fit_seconds')} | {row.get('peak_rss_mib', '')} |")
    lines.append("")
    return lines


def _load(run: dict) -> str:
    """The 1-minute load average when a run ended (the CPU is shared: read its times with it)."""
    m = run.get("machine") or {}
    load = m.get("load_average_at_end") or m.get("load_average_at_start")
    return f"{load[0]:g}" if load else ""
