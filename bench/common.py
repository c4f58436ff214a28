"""What the benchmark modules share (``bench.suite``, ``bench.scale``, ``bench.backbones``,
``bench.engines``, ``bench.svm_methods``): the repository root, the machine and the versions, and
the generated inputs (synthetic photos, synthetic embeddings and their cache). It imports none of
them, so they import it without a circle."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("disc", "square")


# ---------------------------------------------------------------- the machine and the versions

def machine() -> dict:
    """CPU model, cores, RAM, load and OS of this machine."""
    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in f" {flags} "]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "simd": simd,
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict:
    import PIL
    import sklearn

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "pillow": PIL.__version__, "scikit-learn": sklearn.__version__}
    for name in ("tensorflow", "keras"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


# ---------------------------------------------------------------- generated inputs

def make_image(label: int, seed: int, shape=(240, 320), tint: float = 60.0) -> np.ndarray:
    """A labelled synthetic photo: a smooth random background, a bright disc (0) or square (1)
    of random size, colour and place (discs redder, squares bluer by ``tint`` levels, with
    overlap), and pixel noise. uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    low = rng.uniform(40, 200, (4, 5, 3))
    yy = np.linspace(0, 3, h)[:, None]
    xx = np.linspace(0, 4, w)[None, :]
    y0, x0 = np.floor(yy).astype(int).clip(0, 2), np.floor(xx).astype(int).clip(0, 3)
    fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
    bg = (low[y0, x0] * (1 - fy) * (1 - fx) + low[y0 + 1, x0] * fy * (1 - fx)
          + low[y0, x0 + 1] * (1 - fy) * fx + low[y0 + 1, x0 + 1] * fy * fx)
    r = rng.uniform(0.08, 0.22) * h
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    Y, X = np.mgrid[0:h, 0:w]
    if label == 0:
        mask = (Y - cy) ** 2 + (X - cx) ** 2 <= r * r
    else:
        mask = (np.abs(Y - cy) <= r * 0.89) & (np.abs(X - cx) <= r * 0.89)  # same area as the disc
    shift = np.array([tint, 0.0, -tint]) * (1 if label == 0 else -1)  # discs redder, squares bluer
    img = bg + mask[..., None] * (rng.uniform(30, 90, 3) + shift)
    img += rng.normal(0, 18, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_images(root: Path, n: int, start: int = 0, shape=(240, 320), seed: int = 0) -> list[Path]:
    """Writes ``n`` JPEG files (alternating classes) as ``root/<class>/img_<i>.jpg``; returns them."""
    from PIL import Image

    paths = []
    for i in range(start, start + n):
        label = i % 2
        folder = Path(root) / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(make_image(label, seed * 1_000_003 + i, shape)).save(path, quality=90)
        paths.append(path)
    return paths


def fake_embeddings(n: int = 12420, dim: int = 512, sep: float = 2.6, seed: int = 0, chunk: int = 50_000):
    """Two-class, non-negative (ReLU-like) embeddings with a controlled overlap.

    A 24-dimensional latent Gaussian is mixed into ``dim`` correlated features, plus
    independent noise; the classes differ along one latent direction by ``sep`` standard
    deviations, so the best linear rule scores about Phi(sep / 2) (0.90 for sep=2.6), before the
    ReLU bends it a little. Half the images of each class, alternating.

    Returns:
        ``(X float32 (n, dim), y int (n,))``.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    k = 24
    z = rng.normal(size=(n, k))
    z[:, 0] += (y - 0.5) * sep
    mix = rng.normal(size=(k, dim)) / np.sqrt(k)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, chunk):  # the same numbers as one draw, without n x dim float64 arrays
        x = 0.4 + 0.5 * (z[i:i + chunk] @ mix) + 0.5 * rng.normal(size=(len(z[i:i + chunk]), dim))
        out[i:i + chunk] = np.maximum(x, 0)
    return out, y


FAKE_DATASET = "synthetic"  # the DATASET name of the synthetic caches


def write_fake_cache(features: Path, X: np.ndarray, y: np.ndarray):
    """Writes ``X`` as the cache of ``Settings(weights="none", size=224)`` of DATASET=synthetic."""
    from extract.cache import write_cache
    from extract.model import Settings

    settings = Settings(weights="none", size=224)
    rows = []
    for i, label in enumerate(y):
        path = f"{CLASSES[label]}/img_{i:05d}.jpg"
        rows.append({"path": path, "label": CLASSES[label], "split": "",
                     "sha256": hashlib.sha256(path.encode()).hexdigest(),
                     "size": 1000 + i, "mtime_ns": 1_700_000_000_000_000_000 + i})
    rows.sort(key=lambda r: r["path"])
    order = [int(r["path"].rsplit("_", 1)[1].split(".")[0]) for r in rows]  # 6+ digits past 99,999
    meta = {"key": settings.key, "backbone": "vgg16", "weights": "none", "weights_tag": "none",
            "image_size": 224, "pooling": "avg", "precision": "fp32", "dim": int(X.shape[1]),
            "n": len(rows), "class_names": sorted(set(CLASSES[v] for v in y)),
            "computed": len(rows), "reused": 0, "rejected": 0, "seconds": 0.0,
            "note": "synthetic embeddings written by make bench"}
    write_cache(Path(features) / FAKE_DATASET, settings.key, X[order], rows, meta, [])
    return settings


def decoded_batch(paths: list[str], size: int, batch: int) -> np.ndarray:
    """One batch of real files, decoded and resized exactly as extraction does (uint8), in
    memory: the model call preprocesses them itself, on its device."""
    from extract.load import load_image

    return np.stack([load_image(p, size, max_pixels=10**9) for p in paths[:batch]])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
