"""``ENGINE=ray``: the files still to embed go through a Ray Data pipeline.

Reading, hashing and decoding run as parallel Ray tasks (the same :func:`extract.pipeline.read_one`
as the local engine: one read per file, decode only new content), and the backbone runs in a
pool of actors, one model per actor: one actor per GPU when the cluster has GPUs, else one per
node (the framework already uses every core of its node). The results stream back to the driver,
which keeps them exactly as the local engine does (finished batches saved for resume, the cache
written by the same code). ``RAY_ADDRESS`` selects a cluster; without it Ray starts on this
machine. On a cluster the workers read the images by the paths the driver listed, so ``IN``
must be on a file system mounted at the same path on every node; only the driver writes
``FEATURES``.

Ray is an optional dependency (``make setup-ray``, ``requirements-ray.txt``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from .backend import NAN_REASON, NOTHING_RAN
from .model import Settings
from .pipeline import Read

ROOT = Path(__file__).resolve().parents[1]
READ_BATCH = 16  # files per read task


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("ENGINE=ray needs Ray, which is optional: run `make setup-ray` (or "
                         "pip install -r requirements-ray.txt), or use ENGINE=local") from None
    return ray


def start(log=print):
    """Connects to ``RAY_ADDRESS`` or starts Ray on this machine (once per process)."""
    ray = _require_ray()
    if ray.is_initialized():
        return ray
    from .backend import PAUSE_AT_BATCH

    address = os.environ.get("RAY_ADDRESS") or None
    env_vars = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if os.environ.get(PAUSE_AT_BATCH):  # the interruption tests' pause, for actors on a cluster too
        env_vars[PAUSE_AT_BATCH] = os.environ[PAUSE_AT_BATCH]
    env = {"env_vars": {**env_vars, "PYTHONPATH": str(ROOT)}}
    if address:  # remote nodes get the project's code; local workers find it on PYTHONPATH
        env = {"working_dir": str(ROOT), "env_vars": env_vars,
               "excludes": [".venv", ".git", "features", "in", "out", "demo", "bench/work",
                            "test-artifacts"]}
    try:
        ray.init(address=address, runtime_env=env, log_to_driver=False, include_dashboard=False,
                 configure_logging=True, logging_level="ERROR")
    except Exception as err:  # Ray raises ConnectionError, ValueError, RuntimeError, ...
        first = (str(err).strip().splitlines() or [""])[0]
        where = f"the cluster at RAY_ADDRESS={address!r}" if address else "Ray on this machine"
        fix = ("start that cluster, correct RAY_ADDRESS, or unset it to start Ray on this machine"
               if address else "check the Ray installation (make setup-ray)")
        raise ValueError(f"ENGINE=ray cannot use {where} ({type(err).__name__}: {first}); {fix}, "
                         "or use ENGINE=local") from None
    res = ray.cluster_resources()
    log(f"Ray: {'cluster ' + address if address else 'started on this machine'}, "
        f"{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs")
    return ray


def _read_batch(batch: dict, size: int, max_pixels: int, known_ref) -> dict:
    """A Ray task: read, hash and (for new content) decode a batch of files."""
    from .pipeline import read_one

    known = _known(known_ref)
    rows = [read_one(int(i), str(p), size, max_pixels, known.__contains__)
            for i, p in zip(batch["index"], batch["path"])]
    blank = np.zeros((size, size, 3), np.uint8)
    return {
        "index": np.array([r.index for r in rows], np.int64),
        "sha256": np.array([r.sha256 for r in rows], dtype=object),
        "decoded": np.array([r.image is not None for r in rows]),
        "image": np.stack([blank if r.image is None else r.image for r in rows]),
        "error": np.array([r.error for r in rows], dtype=object),
        "lasting": np.array([r.lasting for r in rows]),
    }


_KNOWN: dict = {}


def _known(ref) -> frozenset:
    """The set of known content hashes, fetched once per worker process."""
    key = ref.hex() if hasattr(ref, "hex") else id(ref)
    if key not in _KNOWN:
        import ray

        _KNOWN.clear()
        _KNOWN[key] = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
    return _KNOWN[key]


class _Embed:
    """A Ray actor: one model, embedding the decoded images of each batch."""

    def __init__(self, settings: dict):
        from .backend import device_name, embedder

        self.settings = Settings(**settings)
        self.run = embedder(self.settings)
        self.device = f"{device_name(self.settings.backend)} on {os.uname().nodename}"
        side = self.settings.size
        self.dim = int(np.asarray(self.run(np.zeros((1, side, side, 3), np.uint8))).shape[1])
        self.calls = 0  # batches embedded, for backend.pause_for_tests

    def __call__(self, batch: dict) -> dict:
        from .backend import pause_for_tests

        self.calls += 1
        pause_for_tests(self.calls)
        decoded = np.asarray(batch["decoded"], bool)
        emb = np.zeros((len(decoded), self.dim), np.float32)
        if decoded.any():
            emb[decoded] = np.asarray(self.run(np.asarray(batch["image"][decoded], np.uint8)), np.float32)
        out = {k: batch[k] for k in ("index", "sha256", "decoded", "error", "lasting")}
        out["emb"] = emb
        out["device"] = np.array([self.device] * len(decoded), dtype=object)
        return out


def _actors(ray, actors: int | None) -> tuple[int, float]:
    """(model actors, GPUs per actor): one per GPU, else one per node, unless ``actors`` says."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    n = actors or (gpus or nodes)
    return n, (1.0 if gpus >= n and gpus else 0.0)


def ray_embedded(paths: list[str], settings: Settings, batch: int, max_pixels: int,
                 known: set, device, log=print, progress: bool = True,
                 actors: int | None = None) -> Iterator[tuple[Read, np.ndarray | None]]:
    """The Ray counterpart of :func:`extract.backend.embedded` over ``paths``.

    Args:
        known: content hashes with a vector (or a remembered failure) already: read and
            hashed, never decoded or embedded.

    Yields ``(read, vector)`` for every path (in the order Ray finishes them, each carrying its
    index); ``device.name`` names the devices the actors ran on.
    """
    ray = start(log)
    import logging

    ctx = ray.data.DataContext.get_current()  # imports ray.data, which sets up its loggers
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    known_ref = ray.put(frozenset(known))
    n_actors, gpus = _actors(ray, actors)
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)],
                             override_num_blocks=max(1, min(len(paths) // READ_BATCH, 2000)))
    # Logical CPUs: a model actor asks for half a CPU and a read task for a quarter, so reads
    # are always schedulable beside the actors (with whole CPUs, two actors on two CPUs left
    # none for reading, and the pipeline waited forever), and the different requests keep Ray
    # Data from fusing the reads into the actors (which would decode while the model waits).
    # The framework in an actor uses the node's cores whatever Ray counts.
    ds = ds.map_batches(_read_batch, batch_size=READ_BATCH, batch_format="numpy", num_cpus=0.25,
                        fn_kwargs={"size": settings.size, "max_pixels": max_pixels,
                                   "known_ref": known_ref})
    with warnings.catch_warnings():
        # max_restarts=0: a failed actor ends the run (which resumes from its finished batches)
        # rather than restarting with its arguments possibly gone; Ray 2.60 has no named
        # parameter for it yet and warns about the generic one.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(_Embed, batch_size=batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_actors),
                            num_gpus=gpus or None, num_cpus=0.5, max_restarts=0,
                            fn_constructor_kwargs={"settings": dataclasses.asdict(settings)})
    log(f"embedding with {settings.key} on Ray: {n_actors} model actor(s)"
        + (", one GPU each" if gpus else ""))
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        devices = set(out["device"].tolist())
        if devices:
            device.name = ", ".join(sorted(devices | ({device.name} - {NOTHING_RAN})))
        for i, sha, decoded, error, lasting, vec in zip(out["index"], out["sha256"], out["decoded"],
                                                         out["error"], out["lasting"], out["emb"]):
            r = Read(int(i), str(sha), None, str(error), bool(lasting))
            if not decoded or r.error:
                yield r, None
            elif np.isfinite(vec).all():
                yield r, np.array(vec, np.float32)
            else:
                r.error, r.lasting = NAN_REASON, True
                yield r, None
