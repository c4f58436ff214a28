"""Stage 2 within a memory budget (``MEMORY_GB``): which SVM method, how many fits at once.

The budget covers the whole run: what the process already holds when the fits start (the
libraries, the manifest, the duplicate search's results, and the memory-mapped vectors, whose
pages the fits read; :func:`resident_bytes`) plus the fits that run at the same time.

The exact RBF SVM (:class:`~classify.heads.CalibratedSVC` with ``method="exact"``) holds the
n x n float32 squared distances and a float64 Gram matrix per fit: 12 bytes per entry (14 with
a fold's held-out kernel, and libsvm's cache beside: :func:`exact_bytes`), 30 GiB at 48,000
training images. It is used while the fits that run at the
same time fit in the budget; beyond that the SVM switches to ``method="nystroem"`` (a Nystroem
feature map of the same kernel and a linear SVM), whose memory grows with n times the number
of components, and the number of parallel fits (joblib ``n_jobs``) is lowered until the planned
fits fit. The estimates below are upper bounds of measured peaks (``python -m bench.svm_methods``,
BENCHMARKS.md, and :func:`exact_bytes`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
from pathlib import Path

import numpy as np

GIB = 1024 ** 3
SHARE = 1 / 3  # the default budget: this share of the smallest memory limit that applies
WORKER_BYTES = 400 * 1024 ** 2  # a joblib worker process with numpy, scipy and scikit-learn loaded
NYSTROEM_COMPONENTS = 1024  # components of the bounded-memory SVM when the budget allows them
MIN_COMPONENTS = 128  # fewer than this loses too much accuracy (BENCHMARKS.md); refuse instead
NYSTROEM_MAX_ENTRIES = 25_000_000  # n x components above which LinearSVC takes minutes per fit
NYSTROEM_BYTES_PER_ENTRY = 24  # float64 features (as liblinear reads them) + liblinear's 16-byte nodes
ROW_COPIES = 1  # float32 copies of the training rows in a fit: gathered, then standardised in place


class BudgetError(ValueError):
    """The budget is too small for even one fit; the message says how much is needed."""


def memory_limits() -> dict[str, int]:
    """The memory limits that apply to this process, in bytes, by source.

    ``physical`` (``os.sysconf``), ``cgroup`` (``/sys/fs/cgroup/memory.max`` when set) and
    ``address_space`` (``RLIMIT_AS``, e.g. from ``prlimit --as``) when set.
    """
    limits = {"physical": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits["cgroup"] = int(text)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits["address_space"] = int(soft)
    return limits


def resident_bytes(X=None) -> int:
    """What this process holds before its fits: its resident memory (``VmRSS`` of
    ``/proc/self/status``: anonymous pages and the pages of the libraries' files alike, as its
    peak, ``VmHWM``, counts them; the libraries alone are about 110 MiB of file pages here, which
    counting ``RssAnon`` only had left out), plus the vectors when X is memory-mapped (the fits
    read every row, so its pages become resident too). 0 where ``/proc`` is missing."""
    rss = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            rss = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
    except OSError:
        pass
    return rss + (int(X.nbytes) if isinstance(X, np.memmap) else 0)


def default_memory_gb() -> float:
    """``SHARE`` of the smallest limit of :func:`memory_limits`, in GiB (the ``auto`` budget)."""
    return round(SHARE * min(memory_limits().values()) / GIB, 2)


def parse_memory_gb(value) -> float:
    """``auto`` (or empty, or 0) -> :func:`default_memory_gb`; otherwise a positive number of GiB.

    Raises:
        ValueError: anything else, naming what was received.
    """
    if value is None or str(value).strip().lower() in ("", "auto", "0"):
        return default_memory_gb()
    try:
        gb = float(value)
    except ValueError:
        gb = float("nan")
    if not (gb > 0 and math.isfinite(gb)):
        raise ValueError(f"MEMORY_GB must be 'auto' or a positive number of GiB; received {value!r}")
    return gb


EXACT_BYTES_PER_ENTRY = 14  # float32 distances (4), float64 kernel (8); a fold's held-out kernel (< 2) now
# shares the kernel's buffer (classify.heads.kernels.KernelBuffers), so 2 bytes an entry are slack
LIBSVM_CACHE_BYTES = 200 * 1024 ** 2  # libsvm's kernel cache: SVC's cache_size (200 MiB), 4 bytes an entry
EXACT_FIXED_BYTES = 80 * 1024 ** 2  # the float32 blocks kernels are computed in (4-64 MB), and the rest


def exact_bytes(n: int, dim: int) -> int:
    """Peak bytes of one exact SVM fit on n rows: the float32 squared distances and the float64
    kernel made from them, a fold's held-out kernel (``EXACT_BYTES_PER_ENTRY`` per entry),
    libsvm's kernel cache (4 bytes per entry up to ``LIBSVM_CACHE_BYTES``), the block that
    kernels are computed in (``EXACT_FIXED_BYTES``), and the rows (gathered, and put in
    held-out fold order).

    Measured (the rise of ``VmHWM`` over ``VmRSS`` across one fit of the ``svm`` head, as
    ``make compare`` makes it, on 512-wide rows; ``tests/test_budget.py`` checks two sizes):
    random rows, where nearly every row is a support vector and libsvm's cache fills, 89 MB at
    2,000 rows, 305 MB at 4,000 and 1,072 MB at 8,000 tuned (this estimate: 164, 388 and
    1,222 MB); the bench's synthetic embeddings 78, 263, 1,000 and 2,095 MB at 2,000, 4,000,
    8,000 and 12,000 rows (2,359 MB estimated). The 14 bytes per entry and the rows alone,
    assumed before, ran 7-21% low at 4,000-8,000 rows (and counting the process's anonymous memory only, as held, left out
    110 MiB of library pages: a run at 10,000 x 512 planned 0.99 GiB and peaked at 1.15-1.21).
    """
    n2 = n * n
    return (EXACT_BYTES_PER_ENTRY * n2 + min(4 * n2, LIBSVM_CACHE_BYTES)
            + (ROW_COPIES + 1) * 4 * n * dim + EXACT_FIXED_BYTES)


def nystroem_bytes(n: int, dim: int, components: int) -> int:
    """Peak bytes of one Nystroem SVM fit on n rows with ``components`` components (liblinear
    adds a bias and an end node to each row)."""
    return NYSTROEM_BYTES_PER_ENTRY * n * (components + 2) + ROW_COPIES * 4 * n * dim + 8 * components * components


def other_bytes(n: int, dim: int) -> int:
    """Peak bytes of one fit of another head (logreg, mlp): the rows, the MLP's copy of them split
    into training and validation parts (early stopping), and a tenth of that for slack."""
    return int(1.1 * (ROW_COPIES + 1) * 4 * n * dim)


@dataclasses.dataclass
class Plan:
    """What runs: the SVM method, its components, and how many fits at once.

    Attributes:
        method: ``exact`` or ``nystroem`` (``none`` when no SVM head is asked for).
        components: Nystroem components (0 for exact).
        n_jobs: parallel fits.
        memory_gb: the budget, GiB.
        resident_gb: what the process held before the fits (:func:`resident_bytes`), GiB.
        estimate_gb: the planned peak: resident_gb and the concurrent fits, GiB.
        reason: the choice, in words, for the console and run.json.
    """

    method: str
    components: int
    n_jobs: int
    memory_gb: float
    resident_gb: float
    estimate_gb: float
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fits_at_once(per_fit: int, budget: int, jobs: int) -> int:
    """How many fits of ``per_fit`` bytes fit in ``budget``, at most ``jobs``: one runs in this
    process; two or more run in joblib workers, each with its own libraries (``WORKER_BYTES``)."""
    parallel = min(jobs, budget // (per_fit + WORKER_BYTES))
    return parallel if parallel >= 2 else int(per_fit <= budget)


def _fits_bytes(n_jobs: int, per_fit: int) -> int:
    """The planned bytes of ``n_jobs`` concurrent fits (see :func:`_fits_at_once`)."""
    return n_jobs * (per_fit + WORKER_BYTES) if n_jobs >= 2 else n_jobs * per_fit


def plan_fits(n_train: int, dim: int, memory_gb: float, jobs: int, svm: bool = True,
              resident: int = 0) -> Plan:
    """Chooses the SVM method and the parallel fits so that the run fits in the budget.

    What is left of the budget after ``resident`` goes to the fits. The exact kernel is kept
    whenever one exact fit fits (fewer fits at once if need be); otherwise the Nystroem method
    with as many components (up to ``NYSTROEM_COMPONENTS``) as fit with at least one fit at a
    time and keep n x components under ``NYSTROEM_MAX_ENTRIES`` (time: LinearSVC grows with it;
    measured 35 s per fit for 80,000 x 256 on 2 busy cores), but never fewer than
    ``MIN_COMPONENTS``.

    Args:
        n_train: rows of the largest fit (the final fit on the whole training part).
        dim: embedding width.
        memory_gb: the budget (MEMORY_GB), GiB.
        jobs: the most parallel fits wanted (JOBS).
        svm: whether an SVM head is among the heads.
        resident: bytes the process holds before the fits (:func:`resident_bytes`).

    Returns:
        A :class:`Plan`.

    Raises:
        BudgetError: not even one fit fits; the message says how much memory it needs.
    """
    budget = int(memory_gb * GIB) - resident
    base = other_bytes(n_train, dim)

    def plan(method, m, n_jobs, per_fit, reason):
        return Plan(method, m, n_jobs, memory_gb, round(resident / GIB, 2),
                    round((resident + _fits_bytes(n_jobs, per_fit)) / GIB, 2), reason)

    held = f"; {resident / GIB:.2f} GiB already held (vectors, libraries)" if resident else ""
    if not svm:
        return _checked(plan("none", 0, _fits_at_once(base, budget, jobs), base, "no SVM head" + held),
                        base, resident)
    need = exact_bytes(n_train, dim)
    n_jobs = _fits_at_once(max(need, base), budget, jobs)
    if n_jobs:
        return plan("exact", 0, n_jobs, max(need, base),
                    f"exact RBF kernel: {n_jobs} fit(s) at once of {need / GIB:.2f} GiB each "
                    f"(Gram matrix of {n_train:,} rows) fit in MEMORY_GB={memory_gb:g}{held}")
    sizes = [m for m in (NYSTROEM_COMPONENTS, 512, 256) if n_train * m <= NYSTROEM_MAX_ENTRIES]
    for m in (*sizes, MIN_COMPONENTS):
        need_m = max(nystroem_bytes(n_train, dim, m), base)
        n_jobs = _fits_at_once(need_m, budget, jobs)
        if n_jobs:
            return plan("nystroem", m, n_jobs, need_m,
                        f"Nystroem approximation ({m} components) + linear SVM: the exact kernel "
                        f"needs {need / GIB:.1f} GiB per fit ({n_train:,} training rows), over "
                        f"MEMORY_GB={memory_gb:g}{held}; {n_jobs} fit(s) at once of {need_m / GIB:.2f} GiB")
    need_m = max(nystroem_bytes(n_train, dim, MIN_COMPONENTS), base)
    return _checked(plan("nystroem", MIN_COMPONENTS, 0, need_m, ""), need_m, resident)


def _checked(plan: Plan, per_fit: int, resident: int) -> Plan:
    if plan.n_jobs < 1:
        held = f" on top of the {resident / GIB:.1f} GiB this run already holds" if resident else ""
        raise BudgetError(
            f"one fit needs about {per_fit / GIB:.1f} GiB{held}, more than "
            f"MEMORY_GB={plan.memory_gb:g}; raise MEMORY_GB (this machine's limits: "
            + ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in memory_limits().items())
            + ") or use fewer images")
    return plan


def apply_plan(models: dict, plan: Plan) -> None:
    """Sets the planned SVM method on every :class:`GramRBFSVC` inside ``models`` (in place).

    The estimator is found through ``get_params(deep=True)``, so a pipeline or a wrapper
    around it (e.g. a calibration) is handled alike.
    """
    from .heads import CalibratedSVC, GramRBFSVC, set_inner

    if plan.method not in ("exact", "nystroem"):
        return
    for model in models.values():
        set_inner(model, (GramRBFSVC, CalibratedSVC), method=plan.method,
                  n_components=plan.components or NYSTROEM_COMPONENTS)


def plan_for(models: dict, X, n_train: int, memory_gb, jobs: int | None, log=print) -> Plan:
    """Plans (:func:`plan_fits`), applies (:func:`apply_plan`) and logs the budget of a run.

    Args:
        models: {head name: unfitted estimator}; changed in place.
        X: the vectors the fits read (their width, and whether they are memory-mapped).
        n_train: rows of the largest fit.
        memory_gb: MEMORY_GB (``auto`` or GiB).
        jobs: JOBS (None or 0: every core).
        log: where the line goes.
    """
    gb = parse_memory_gb(memory_gb)
    limits = memory_limits()
    if gb * GIB > min(limits.values()):
        log(f"warning: MEMORY_GB={gb:g} is more than this machine lets the run use ("
            + ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in limits.items())
            + "): a plan that needs it will swap or be killed; MEMORY_GB=auto plans within "
            f"{default_memory_gb():g} GiB")
    plan = plan_fits(n_train, X.shape[1], gb, jobs or os.cpu_count() or 1, svm="svm" in models,
                     resident=resident_bytes(X))
    apply_plan(models, plan)
    log(f"memory: MEMORY_GB={gb:g}; {plan.n_jobs} parallel fit(s); svm: {plan.reason}")
    return plan
