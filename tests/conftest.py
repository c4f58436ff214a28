"""Shared fixtures: tiny synthetic image folders written to tmp_path, random-init weights."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path


def _one_core_each() -> None:
    """Under pytest-xdist, each worker's numerical libraries (OpenBLAS, OpenMP, TensorFlow's pools)
    get the worker's share of the cores, set before NumPy loads; the processes a test starts inherit
    it. With every library sized to the whole machine in every worker, the cores were oversubscribed.
    A value already in the environment is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ.setdefault(name, share)


_one_core_each()

import numpy as np  # noqa: E402 (after the thread settings)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLOURS = {"red": (210, 40, 40), "blue": (40, 40, 210), "green": (40, 190, 60)}

# `make test` runs the modules on every core (pytest-xdist, ``--dist loadfile``: one module stays
# on one worker, so its module-scoped fixtures are built once). The workers take the modules in
# this order, the longest first, so that no long module starts last; the rest follow in their
# usual order (the durations of a whole run, `pytest --durations=0`, tell which are long).
LONGEST_FIRST = ("test_engines", "test_backends", "test_make", "test_backbones", "test_classify",
                 "test_audit", "test_badinput", "test_budget", "test_matrix", "test_extract",
                 "test_predict", "test_report", "test_compare_console", "test_tune", "test_fair",
                 "test_probes")


def pytest_collection_modifyitems(session, config, items):
    """Under xdist, puts the long modules first (see :data:`LONGEST_FIRST`); alone, changes nothing."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))


def colour_image(colour, seed: int, size=(48, 40), noise: float = 25.0) -> Image.Image:
    """A noisy image of one dominant colour with a random bright square on it."""
    rng = np.random.default_rng(seed)
    h, w = size
    arr = np.array(colour, float) + rng.normal(0, noise, (h, w, 3))
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    arr[y:y + h // 3, x:x + w // 3] += 60
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_class_folder(root: Path, per_class: int = 10, classes=("red", "blue"), split: str = "",
                       start: int = 0, fmt: str = "png") -> list[Path]:
    """Writes ``root/[split/]<class>/img_<i>.<fmt>`` images; returns their paths."""
    paths = []
    for c, name in enumerate(classes):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            path = folder / f"img_{i:03d}.{fmt}"
            colour_image(COLOURS[name], seed=1000 * c + i + (500 if split == "test" else 0)).save(path)
            paths.append(path)
    return paths


def shape_image(seed: int, kind: str, size: int = 64) -> Image.Image:
    """A flat background of a random colour with one ellipse or rectangle of another colour."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
    x1, y1 = x0 + int(rng.integers(size // 4, size // 2)), y0 + int(rng.integers(size // 4, size // 2))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if kind == "ellipse" else draw.rectangle)(
        [x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


@pytest.fixture
def two_class(tmp_path) -> Path:
    """A two-class folder (red vs blue, 10 each) without split folders."""
    root = tmp_path / "in"
    write_class_folder(root, 10)
    return root


def only_cache(features) -> dict:
    """``in_dir`` and ``dataset`` of the single cache under ``features`` (for stage-2 calls in tests).

    Empty when there is none (the call then looks for the cache of ``in``).
    """
    import json

    metas = sorted(Path(features).glob("*/*/meta.json"))
    if not metas:
        return {}
    assert len(metas) == 1, f"expected one cache under {features}, found {metas}"
    meta = json.loads(metas[0].read_text())
    return {"in_dir": meta.get("input") or "in", "dataset": metas[0].parent.parent.name}


@contextlib.contextmanager
def model_dies_at_batch(n: int):
    """Within the block, the model call raises KeyboardInterrupt at its ``n``-th batch (a Ctrl-C
    in the middle of a run)."""
    from extract import backend

    real, calls = backend.embedder, {"n": 0}

    def dying(settings):
        f = real(settings)

        def call(x):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return f(x)
        return call

    backend.embedder = dying
    try:
        yield
    finally:
        backend.embedder = real


def vectors_in(folder: Path) -> int:
    """How many embedded vectors the finished shards (``*.npz``) below ``folder`` hold."""
    n = 0
    for path in Path(folder).rglob("*.npz"):
        try:
            with np.load(path) as data:
                n += data["sha256"].shape[0]
        except Exception:  # a shard being written, or not a shard
            pass
    return n


def run_cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs ``python -m <args>`` with this interpreter; returns the completed process."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_make(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    """Runs ``make <args>`` in the project root with the current virtualenv.

    Skips when pytest does not run inside a virtualenv made by ``make setup``: make would
    otherwise try to create one over this interpreter's prefix.
    """
    venv = Path(sys.prefix)
    if not (venv / ".installed").is_file():
        pytest.skip(f"{venv} is not a virtualenv made by `make setup`; run the tests with `make test`")
    return subprocess.run(["make", "--no-print-directory", *map(str, args), f"VENV={venv}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


@contextlib.contextmanager
def counting_model_rows():
    """Within the block, the model call records how many images each batch held (a list)."""
    from extract import backend

    real, seen = backend.embedder, []

    def counting(settings):
        f = real(settings)

        def call(x):
            seen.append(int(x.shape[0]))
            return f(x)
        return call

    backend.embedder = counting
    try:
        yield seen
    finally:
        backend.embedder = real
