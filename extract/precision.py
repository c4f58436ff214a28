"""``PRECISION=auto``: pick the fastest precision whose embeddings agree with fp32, on this machine.

Mixed bfloat16 ran VGG16 at 1.95x fp32 on a 2-core AMD EPYC (Zen 4, AVX-512 BF16) but at 0.58x
on an Intel Xeon with AVX-512 BF16 and no AMX (``make bench`` on both): no fixed precision is
right everywhere. So a short calibration times each candidate on one small batch of the input's
own images, drawn across its classes, and compares its vectors with fp32's: the fastest candidate
whose lowest cosine similarity to fp32 is at least :data:`MIN_COSINE` wins (fp32 always
qualifies).

The choice is remembered in ``FEATURES/.precision.json`` (:mod:`extract.choices`) per machine
(:mod:`extract.machine`: CPU model and flags, cores, GPU, the backend and its version, all read
without importing the framework) and per setting (backbone, pooling, size, weights, layer, and BATCH),
so later runs, and stage 2, which must find the cache of the resolved key, do not calibrate
again. The cache key records the resolved precision, never ``auto``, so caches of two
precisions never mix.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import backend, choices
from .model import Settings

MIN_COSINE = 0.999
CALIBRATION_IMAGES = 8  # one batch this small keeps calibration to seconds at 224 px on a CPU
TIMED_CALLS = 2  # after one untimed call (tracing)


def setting_id(settings: Settings, batch: int | None = None) -> str:
    """What the choice depends on besides the machine (the precision itself excluded).

    Args:
        settings: backbone, pooling, size, weights and layer.
        batch: BATCH, the images per model call; None gives the setting without it.
    """
    sid = f"{settings.backbone}-{settings.pooling}-{settings.size}-{settings.weights_tag}"
    if settings.layer:
        sid = f"{sid}-{settings.layer}"
    return sid if batch is None else f"{sid} batch {batch}"


def candidates(device: str) -> tuple[str, ...]:
    """Precisions worth timing: fp16 pays on GPUs; on CPUs it is emulated and slow."""
    return ("fp32", "bf16", "fp16") if device.startswith("GPU") else ("fp32", "bf16")


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(1) / np.maximum(norms, 1e-30)).min())


def calibrate(settings: Settings, images: np.ndarray, device: str, log=print) -> dict:
    """Times each candidate precision on ``images`` and picks the fastest that agrees with fp32.

    Args:
        settings: the setting to calibrate (its precision is ignored).
        images: (n, size, size, 3) uint8 RGB images, already resized: one model call.
        device: the device name (decides the candidates).

    Returns:
        ``{"chosen", "images_per_second": {precision: ips}, "min_cosine": {precision: cos},
        "min_cosine_required", "calibration_images", "seconds", "device"}``.
    """
    t0 = time.perf_counter()
    x = np.asarray(images, np.uint8)
    speed, cosine, vectors = {}, {}, {}
    for precision in candidates(device):
        run = backend.embedder(dataclasses.replace(settings, precision=precision))
        vectors[precision] = np.asarray(run(x), np.float32)  # traced and warmed up
        times = []
        for _ in range(TIMED_CALLS):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        speed[precision] = round(len(x) / float(np.median(times)), 3)
        ok = np.isfinite(vectors[precision]).all()
        cosine[precision] = round(_min_cosine(vectors[precision], vectors["fp32"]), 6) if ok else -1.0
    qualified = [p for p in speed if cosine[p] >= MIN_COSINE] or ["fp32"]
    chosen = max(qualified, key=lambda p: speed[p])
    info = {"chosen": chosen, "images_per_second": speed, "min_cosine": cosine,
            "min_cosine_required": MIN_COSINE, "calibration_images": int(len(x)),
            "seconds": round(time.perf_counter() - t0, 2), "device": device}
    log(f"PRECISION=auto: {chosen} on {device} ("
        + ", ".join(f"{p} {speed[p]:.1f} images/s, cosine {cosine[p]:.5f}" for p in speed) + ")")
    return info


def sample_paths(listing, n: int) -> list[str]:
    """Up to ``n`` image paths of ``listing``, taken in turn from each class (and split).

    Args:
        listing: a :class:`extract.files.Listing`.
        n: how many.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for c in listing.candidates:
        groups.setdefault((c.split, c.label), []).append(c.abspath)
    queues = list(groups.values())
    picked: list[str] = []
    for i in range(max((len(q) for q in queues), default=0)):
        picked += [q[i] for q in queues if i < len(q)]
        if len(picked) >= n:
            break
    return picked[:n]


def sample_images(paths: list[str], size: int, max_pixels: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``n`` decodable images among ``paths`` (in order), resized, for calibration."""
    from .load import ImageError, load_image

    found = []
    for path in paths:
        try:
            found.append(load_image(path, size, max_pixels))
        except ImageError:
            continue
        if len(found) >= n:
            break
    if not found:
        raise ValueError("PRECISION=auto needs at least one readable image to calibrate on; "
                         "none of the input's images could be decoded")
    return np.stack(found)


def resolve(settings: Settings, features, listing, batch: int, max_pixels: int,
            log=print) -> tuple[Settings, dict]:
    """Turns ``precision="auto"`` into a concrete precision (remembered, else calibrated).

    Args:
        listing: the input's :class:`extract.files.Listing`; calibration images come from it.
        batch: BATCH; the calibration's model call holds at most this many images.

    Returns:
        ``(settings with the chosen precision, calibration info)``; settings of another
        precision come back unchanged with an empty dict.
    """
    if settings.precision != "auto":
        return settings, {}
    from .machine import machine_id

    probe = dataclasses.replace(settings, precision="fp32").check()
    machine, setting = machine_id(settings.backend), setting_id(probe, batch)
    info = choices.recall(features, machine, setting, log=log)
    if info is not None:
        log(f"PRECISION=auto: {info['chosen']} (remembered for this machine in "
            f"{choices.memory_path(features)})")
        return dataclasses.replace(settings, precision=info["chosen"]), dict(info, remembered=True)
    paths = sample_paths(listing, 4 * CALIBRATION_IMAGES)
    images = sample_images(paths, settings.size, max_pixels, min(batch, CALIBRATION_IMAGES))
    info = calibrate(probe, images, backend.device_name(settings.backend), log=log)
    choices.remember(features, machine, setting, info, log=log)
    return dataclasses.replace(settings, precision=info["chosen"]), dict(info, remembered=False)


def resolved_without_calibrating(settings: Settings, features) -> Settings:
    """Stage 2's view of ``auto``: the precision remembered for this setting, else an error.

    Raises:
        ValueError: no single precision is remembered for this setting.
    """
    if settings.precision != "auto":
        return settings
    sid = setting_id(dataclasses.replace(settings, precision="fp32"))
    found = choices.choices_for(features, sid)
    if len(found) != 1:
        raise ValueError(
            f"PRECISION=auto: {'no' if not found else 'more than one'} precision is remembered for "
            f"{sid} in {choices.memory_path(features)} "
            f"({', '.join(sorted(found)) or 'run make features PRECISION=auto first'}); "
            "pass the precision itself, e.g. PRECISION=fp32")
    return dataclasses.replace(settings, precision=found.pop())
