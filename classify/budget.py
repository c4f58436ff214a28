"""Stage 2 within a memory budget (``MEMORY_GB``): which SVM method, how many fits at once.

The exact RBF SVM (:class:`~classify.heads.CalibratedSVC` with ``method="exact"``) holds the
n x n float32 squared distances and a float64 Gram matrix per fit: 12 bytes per entry (14 with
libsvm's copies), 30 GiB at 48,000 training images. It is used while the fits that run at the
same time fit in the budget; beyond that the SVM switches to ``method="nystroem"`` (a Nystroem
feature map of the same kernel and a linear SVM), whose memory grows with n times the number
of components, and the number of parallel fits (joblib ``n_jobs``) is lowered until the planned
fits fit. The estimates below are upper bounds of measured peaks (``python -m bench.svm_methods``,
BENCHMARKS.md, and :func:`exact_bytes`).
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path

GIB = 1024 ** 3
SHARE = 0.5  # the default budget: this share of the smallest memory limit that applies
WORKER_BYTES = 400 * 1024 ** 2  # a joblib worker process with numpy, scipy and scikit-learn loaded
NYSTROEM_COMPONENTS = 1024  # components of the bounded-memory SVM when the budget allows them
MIN_COMPONENTS = 128  # fewer than this loses too much accuracy (BENCHMARKS.md); refuse instead
NYSTROEM_MAX_ENTRIES = 25_000_000  # n x components above which LinearSVC takes minutes per fit
NYSTROEM_BYTES_PER_ENTRY = 28  # float32 features + LinearSVC's float64 copy + liblinear's 16-byte nodes
ROW_COPIES = 2  # float32 copies of the training rows in a fit: the fold's rows and the scaled rows


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
    if not gb > 0:
        raise ValueError(f"MEMORY_GB must be 'auto' or a positive number of GiB; received {value!r}")
    return gb


def exact_bytes(n: int, dim: int) -> int:
    """Peak bytes of one exact SVM fit on n rows: the float32 squared distances and the float64
    Gram matrix made from them (12 bytes per entry), libsvm's own copies, and the rows.

    Measured: 1,302 MiB above the process's start for 9,936 rows, tuned or not (14 x n^2 and
    the rows make 1,358 MiB).
    """
    return 14 * n * n + ROW_COPIES * 4 * n * dim


def nystroem_bytes(n: int, dim: int, components: int) -> int:
    """Peak bytes of one Nystroem SVM fit on n rows with ``components`` components."""
    return NYSTROEM_BYTES_PER_ENTRY * n * components + ROW_COPIES * 4 * n * dim + 8 * components * components


def other_bytes(n: int, dim: int) -> int:
    """Peak bytes of one fit of another head (logreg, mlp): the rows, their scaled copy, slack."""
    return (ROW_COPIES + 1) * 4 * n * dim


@dataclasses.dataclass
class Plan:
    """What runs: the SVM method, its components, and how many fits at once.

    Attributes:
        method: ``exact`` or ``nystroem`` (``none`` when no SVM head is asked for).
        components: Nystroem components (0 for exact).
        n_jobs: parallel fits.
        memory_gb: the budget, GiB.
        estimate_gb: the planned peak of the concurrent fits, GiB.
        reason: the choice, in words, for the console and run.json.
    """

    method: str
    components: int
    n_jobs: int
    memory_gb: float
    estimate_gb: float
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fits_at_once(per_fit: int, budget: int, jobs: int) -> int:
    """How many fits of ``per_fit`` bytes (plus a worker each) fit in ``budget``, at most ``jobs``."""
    return max(0, min(jobs, budget // (per_fit + WORKER_BYTES)))


def plan_fits(n_train: int, dim: int, memory_gb: float, jobs: int, svm: bool = True) -> Plan:
    """Chooses the SVM method and the parallel fits so that the concurrent fits fit in the budget.

    The exact kernel is kept whenever one exact fit fits (fewer fits at once if need be);
    otherwise the Nystroem method with as many components (up to ``NYSTROEM_COMPONENTS``) as
    fit with at least one fit at a time and keep n x components under ``NYSTROEM_MAX_ENTRIES``
    (time: LinearSVC grows with it; measured 35 s per fit for 80,000 x 256 on 2 busy cores),
    but never fewer than ``MIN_COMPONENTS``.

    Args:
        n_train: rows of the largest fit (the final fit on the whole training part).
        dim: embedding width.
        memory_gb: the budget (MEMORY_GB), GiB.
        jobs: the most parallel fits wanted (JOBS).
        svm: whether an SVM head is among the heads.

    Returns:
        A :class:`Plan`.

    Raises:
        BudgetError: not even one fit fits; the message says how much memory it needs.
    """
    budget = int(memory_gb * GIB)
    base = other_bytes(n_train, dim)
    if not svm:
        n_jobs = _fits_at_once(base, budget, jobs)
        return _checked(Plan("none", 0, n_jobs, memory_gb, _gb(n_jobs, base), "no SVM head"), base)
    need = exact_bytes(n_train, dim)
    n_jobs = _fits_at_once(max(need, base), budget, jobs)
    if n_jobs:
        return Plan("exact", 0, n_jobs, memory_gb, _gb(n_jobs, need),
                    f"exact RBF kernel: {n_jobs} fit(s) at once of {need / GIB:.2f} GiB each "
                    f"(Gram matrix of {n_train:,} rows) fit in MEMORY_GB={memory_gb:g}")
    sizes = [m for m in (NYSTROEM_COMPONENTS, 512, 256) if n_train * m <= NYSTROEM_MAX_ENTRIES]
    for m in (*sizes, MIN_COMPONENTS):
        need_m = max(nystroem_bytes(n_train, dim, m), base)
        n_jobs = _fits_at_once(need_m, budget, jobs)
        if n_jobs:
            return Plan("nystroem", m, n_jobs, memory_gb, _gb(n_jobs, need_m),
                        f"Nystroem approximation ({m} components) + linear SVM: the exact kernel "
                        f"needs {need / GIB:.1f} GiB per fit ({n_train:,} training rows), over "
                        f"MEMORY_GB={memory_gb:g}; {n_jobs} fit(s) at once of {need_m / GIB:.2f} GiB")
    return _checked(Plan("nystroem", MIN_COMPONENTS, 0, memory_gb, 0.0, ""),
                    nystroem_bytes(n_train, dim, MIN_COMPONENTS))


def _gb(n_jobs: int, per_fit: int) -> float:
    return round(n_jobs * (per_fit + WORKER_BYTES) / GIB, 2)


def _checked(plan: Plan, per_fit: int) -> Plan:
    if plan.n_jobs < 1:
        raise BudgetError(
            f"one fit needs about {(per_fit + WORKER_BYTES) / GIB:.1f} GiB, more than "
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


def plan_for(models: dict, n_train: int, dim: int, memory_gb, jobs: int | None, log=print) -> Plan:
    """Plans (:func:`plan_fits`), applies (:func:`apply_plan`) and logs the budget of a run.

    Args:
        models: {head name: unfitted estimator}; changed in place.
        n_train: rows of the largest fit.
        dim: embedding width.
        memory_gb: MEMORY_GB (``auto`` or GiB).
        jobs: JOBS (None or 0: every core).
        log: where the line goes.
    """
    gb = parse_memory_gb(memory_gb)
    plan = plan_fits(n_train, dim, gb, jobs or os.cpu_count() or 1, svm="svm" in models)
    apply_plan(models, plan)
    log(f"memory: MEMORY_GB={gb:g}; {plan.n_jobs} parallel fit(s); svm: {plan.reason}")
    return plan
