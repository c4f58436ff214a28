"""``PRECISION=auto``: pick the fastest precision whose embeddings agree with fp32, on this machine.

Mixed bfloat16 ran VGG16 at 1.95x fp32 on a 2-core AMD EPYC (Zen 4, AVX-512 BF16) but at 0.58x
on an Intel Xeon with AVX-512 BF16 and no AMX (``make bench`` on both): no fixed precision is
right everywhere. So a short calibration times each candidate on one small batch of the input's
own images and compares its vectors with fp32's: the fastest candidate whose lowest cosine
similarity to fp32 is at least :data:`MIN_COSINE` wins (fp32 always qualifies).

The choice is remembered in ``FEATURES/.precision.json`` per machine (CPU model, device,
TensorFlow version) and per backbone, size, pooling and weights, so later runs (and stage 2,
which must find the cache of the resolved key) do not calibrate again. The cache key records
the resolved precision, never ``auto``, so caches of two precisions never mix.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

from .model import Settings

MIN_COSINE = 0.999
CALIBRATION_IMAGES = 8  # one batch this small keeps calibration to seconds at 224 px on a CPU
TIMED_CALLS = 2  # after one untimed call (tracing)
MEMORY_FILE = ".precision.json"


def machine_id(device: str) -> str:
    """The machine as far as speed goes: CPU model, the device the model runs on, TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sys

    tf = sys.modules.get("tensorflow")
    return f"{cpu} | {device} | tensorflow {getattr(tf, '__version__', '?')}"


def setting_id(settings: Settings) -> str:
    """What the choice depends on besides the machine (the precision itself excluded)."""
    return f"{settings.backbone}-{settings.pooling}-{settings.size}-{settings.weights_tag}"


def candidates(device: str) -> tuple[str, ...]:
    """Precisions worth timing: fp16 pays on GPUs; on CPUs it is emulated and slow."""
    return ("fp32", "bf16", "fp16") if device.startswith("GPU") else ("fp32", "bf16")


def remembered(features, settings: Settings, device: str) -> dict | None:
    """The remembered calibration for this machine and setting, or None."""
    try:
        data = json.loads((Path(features) / MEMORY_FILE).read_text(encoding="utf-8"))
        return data[machine_id(device)][setting_id(settings)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(features, settings: Settings, device: str, info: dict) -> None:
    """Adds ``info`` to ``FEATURES/.precision.json`` (atomically)."""
    from .cache import write_json

    path = Path(features) / MEMORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data.setdefault(machine_id(device), {})[setting_id(settings)] = info
    Path(features).mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(1) / np.maximum(norms, 1e-30)).min())


def calibrate(settings: Settings, images: np.ndarray, device: str, log=print) -> dict:
    """Times each candidate precision on ``images`` and picks the fastest that agrees with fp32.

    Args:
        settings: the setting to calibrate (its precision is ignored).
        images: (n, size, size, 3) uint8 RGB images, already resized.
        device: the device name (decides the candidates).

    Returns:
        ``{"chosen", "images_per_second": {precision: ips}, "min_cosine": {precision: cos},
        "min_cosine_required", "calibration_images", "seconds"}``.
    """
    from .model import preprocess_fn
    from .run import embedder

    t0 = time.perf_counter()
    x = preprocess_fn(settings.backbone)(np.asarray(images, np.float32))
    speed, cosine, vectors = {}, {}, {}
    for precision in candidates(device):
        run = embedder(dataclasses.replace(settings, precision=precision))
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


def resolve(settings: Settings, features, sample, max_pixels: int,
            log=print) -> tuple[Settings, dict]:
    """Turns ``precision="auto"`` into a concrete precision (remembered, else calibrated).

    Args:
        sample: called (only when calibrating) for image paths to calibrate on.

    Returns:
        ``(settings with the chosen precision, calibration info)``; settings of another
        precision come back unchanged with an empty dict.
    """
    if settings.precision != "auto":
        return settings, {}
    from .model import device_name

    probe = dataclasses.replace(settings, precision="fp32").check()
    device = device_name()
    info = remembered(features, probe, device)
    if info is not None:
        log(f"PRECISION=auto: {info['chosen']} (remembered for this machine in "
            f"{Path(features) / MEMORY_FILE})")
        return dataclasses.replace(settings, precision=info["chosen"]), dict(info, remembered=True)
    info = calibrate(probe, sample_images(sample(), settings.size, max_pixels), device, log=log)
    remember(features, probe, device, info)
    return dataclasses.replace(settings, precision=info["chosen"]), dict(info, remembered=False)


def resolved_without_calibrating(settings: Settings, features) -> Settings:
    """Stage 2's view of ``auto``: the precision remembered for this machine, else an error.

    Raises:
        ValueError: no calibration is remembered for this machine and setting.
    """
    if settings.precision != "auto":
        return settings
    probe = dataclasses.replace(settings, precision="fp32")
    try:
        data = json.loads((Path(features) / MEMORY_FILE).read_text(encoding="utf-8"))
        choices = {m[setting_id(probe)]["chosen"] for m in data.values() if setting_id(probe) in m}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        choices = set()
    if len(choices) != 1:
        raise ValueError(
            f"PRECISION=auto: {'no' if not choices else 'more than one'} precision is remembered for "
            f"{setting_id(probe)} in {Path(features) / MEMORY_FILE} "
            f"({', '.join(sorted(choices)) or 'run make features PRECISION=auto first'}); "
            "pass the precision itself, e.g. PRECISION=fp32")
    return dataclasses.replace(settings, precision=choices.pop())
