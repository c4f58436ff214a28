"""``make import``: embeddings computed elsewhere (CLIP, DINOv2, ...) -> a cache with the stage-1 contract.

``python -m classify.importer --embeddings E.npy --labels L.csv --dataset NAME [--features F]``
checks the two files and writes ``F/NAME/imported-<dim>/`` (``embeddings.npy``,
``manifest.csv``, ``meta.json``, ``rejected.csv``) through :func:`extract.cache.write_cache`,
so stage 2 reads it as any other cache. No TensorFlow.

Rules (each refusal names the file and the rule, and says what to do):

- ``E.npy``: a NumPy ``.npy`` file (no pickles) holding a 2-D array (N, D), N, D >= 1, of a
  floating-point dtype. float16 and float64 are accepted and converted to float32 (the cache's
  dtype; float64 values are rounded, so near-equal vectors may become equal); integer, boolean
  and complex arrays are refused, since they are rarely embeddings and usually a wrong file.
  A row with NaN or an infinite value (also after the conversion) is refused, naming the first.
- ``L.csv``: UTF-8 CSV with a header holding ``path`` and ``label`` and optionally ``split``
  (``train``, ``test``, ``val``, ``valid``, ``validation`` or empty), one row per vector in the
  same order. ``path`` is any unique, non-empty identifier (a file name is usual); ``label``
  non-empty.
- The manifest is sorted by path (the contract), the vectors reordered with it. The ``sha256``
  of an imported row is the SHA-256 of its vector's float32 bytes, so identical vectors count
  as exact copies in duplicates and hold-out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from .data import DataError

SPLITS = ("train", "test", "val", "valid", "validation")
CHECK_ROWS = 65_536  # rows checked for NaN/inf at once (bounded memory)
DATASET_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ImportRefused(DataError):
    """An input that cannot be imported; the message names the file, the rule and what to do."""


def check_dataset(dataset) -> str:
    """The DATASET name, checked: it becomes a folder name under FEATURES.

    Raises:
        ImportRefused: missing, or not a plain folder name.
    """
    name = (dataset or "").strip()
    if not name:
        raise ImportRefused("DATASET is required for an import: it names the cache folder "
                           "FEATURES/<DATASET>/ (e.g. make import EMBEDDINGS=e.npy LABELS=l.csv "
                           "DATASET=food101-clip)")
    if not DATASET_RULE.match(name):
        raise ImportRefused(f"DATASET must be a folder name of letters, digits, '.', '_' and '-', "
                           f"starting with a letter or digit; received {dataset!r}")
    return name


def read_embeddings(path) -> tuple[np.ndarray, str]:
    """Loads and checks the vectors.

    Returns:
        (float32 (N, D) array, the file's original dtype name).

    Raises:
        ImportRefused: unreadable, not 2-D, empty, not floating point, or with NaN/inf rows.
    """
    if not str(path or "").strip():
        raise ImportRefused("EMBEDDINGS is required: the .npy file of the vectors (make import "
                            "EMBEDDINGS=e.npy LABELS=l.csv DATASET=name)")
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"EMBEDDINGS={path} does not exist; give the .npy file of the vectors")
    check_npy_header(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise ImportRefused(f"EMBEDDINGS={path} cannot be read as a NumPy .npy array ({type(err).__name__}: "
                           f"{err}); save it with numpy.save(path, array)") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or 0 in arr.shape:
        shape = getattr(arr, "shape", None)
        raise ImportRefused(f"EMBEDDINGS={path} must hold a 2-D array (N vectors, D dimensions) with "
                           f"N, D >= 1; received shape {shape}; reshape it to (N, D) before saving")
    if arr.dtype.kind != "f":
        raise ImportRefused(f"EMBEDDINGS={path} must hold floating-point vectors (float16, float32 or "
                           f"float64); received dtype {arr.dtype}; convert with array.astype('float32') "
                           "if these numbers really are the embeddings")
    with np.errstate(over="ignore"):  # overflowing values become inf, refused just below
        emb = np.ascontiguousarray(arr, dtype=np.float32)
    bad = nonfinite_rows(emb)
    if len(bad):
        first = ", ".join(str(i) for i in bad[:5])
        raise ImportRefused(f"EMBEDDINGS={path} has {len(bad)} rows with NaN or infinite values (first rows, "
                           f"counting from 0: {first}); a vector must be finite (float64 values beyond "
                           "float32's range become infinite): fix or drop those rows and their labels")
    return emb, str(arr.dtype)


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)
SAVE_IT = "save the array of vectors with numpy.save('vectors.npy', array) and give that file"


def check_npy_header(path: Path) -> None:
    """Refuses a file that is not a ``.npy`` file by its first bytes, saying what it is instead.

    ``numpy.load`` takes anything that is neither ``.npy`` nor a zip archive for a pickle, so its
    own error calls a CSV or a text file "pickled data", and it opens a ``.npz`` archive as a
    mapping of arrays rather than refusing it.

    Raises:
        ImportRefused: a ``.npz``/zip archive (naming its arrays), a pickle, a text file, or
            anything else that does not start with NumPy's magic bytes.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(NPY_MAGIC):
        return
    if head.startswith(b"PK"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
        except (OSError, zipfile.BadZipFile):
            names = []
        held = f" holding {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
        raise ImportRefused(f"EMBEDDINGS={path} is a .npz (zip) archive{held}, not a .npy file; "
                            f"{SAVE_IT} (e.g. numpy.save('vectors.npy', numpy.load('{path.name}')['<name>']))")
    if head[:1] == b"\x80":  # a pickle's protocol opcode
        raise ImportRefused(f"EMBEDDINGS={path} is a Python pickle, not a .npy file; this tool never "
                            f"loads pickles (loading one can run code): {SAVE_IT}")
    text = _as_text(head)
    if text:
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        raise ImportRefused(f"EMBEDDINGS={path} is a text file (it begins {first!r}), not a .npy file; "
                            f"read it into an array (e.g. numpy.loadtxt(path, delimiter=',')) and {SAVE_IT}")
    raise ImportRefused(f"EMBEDDINGS={path} is not a NumPy .npy file (it does not begin with NumPy's "
                        f"magic bytes \\x93NUMPY); {SAVE_IT}")


def _as_text(head: bytes) -> str | None:
    """``head`` as text when it reads as UTF-8 text (a multi-byte character cut at its end
    allowed), else None."""
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if text and all(c.isprintable() or c.isspace() for c in text) else None
    return None


def nonfinite_rows(emb: np.ndarray) -> np.ndarray:
    """Row numbers holding NaN or an infinite value, checked in blocks of ``CHECK_ROWS``."""
    bad = [i + np.flatnonzero(~np.isfinite(emb[i:i + CHECK_ROWS]).all(1))
           for i in range(0, len(emb), CHECK_ROWS)]
    return np.concatenate(bad) if bad else np.empty(0, int)


def read_labels(path, n: int) -> list[dict]:
    """Reads and checks the labels: one row per vector, in order.

    Returns:
        Rows {path, label, split} (NFC-normalised, stripped), in the file's order.

    Raises:
        ImportRefused: missing columns, a row count other than ``n``, an empty path or label,
            an unknown split, or a path listed twice.
    """
    if not str(path or "").strip():
        raise ImportRefused("LABELS is required: the CSV file with columns path,label[,split] (make "
                            "import EMBEDDINGS=e.npy LABELS=l.csv DATASET=name)")
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"LABELS={path} does not exist; give the CSV file with columns path,label[,split]")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ImportRefused(f"LABELS={path} must have a header row with columns path,label (and "
                               f"optionally split); missing {sorted(missing)}; received columns "
                               f"{reader.fieldnames}")
        rows = [{"path": unicodedata.normalize("NFC", (r.get("path") or "").strip()),
                 "label": unicodedata.normalize("NFC", (r.get("label") or "").strip()),
                 "split": (r.get("split") or "").strip().lower()} for r in reader]
    if len(rows) != n:
        raise ImportRefused(f"LABELS={path} has {len(rows)} rows but EMBEDDINGS has {n} vectors; there "
                           "must be one label row per vector, in the same order")
    for col, what in (("path", "an identifier"), ("label", "a class name")):
        empty = [i for i, r in enumerate(rows) if not r[col]]
        if empty:
            raise ImportRefused(f"LABELS={path}: {len(empty)} rows have an empty {col} (first data rows, "
                               f"counting from 0: {', '.join(map(str, empty[:5]))}); every row needs "
                               f"{what}")
    odd = sorted({r["split"] for r in rows} - {"", *SPLITS})
    if odd:
        raise ImportRefused(f"LABELS={path}: split must be empty or one of {', '.join(SPLITS)}; received "
                           f"{odd[:5]}")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["path"] in seen:
            raise ImportRefused(f"LABELS={path}: path {r['path']!r} appears twice (rows {seen[r['path']]} "
                               f"and {i}, counting from 0); paths must be unique: rename one")
        seen[r["path"]] = i
    return rows


def vector_sha256(emb: np.ndarray) -> list[str]:
    """The ``sha256`` of each imported row: SHA-256 of its float32 bytes (equal vectors, equal hash)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in emb]


def import_embeddings(embeddings, labels, dataset, features="features", log=print) -> Path:
    """Checks both files and writes ``FEATURES/<dataset>/imported-<dim>/``.

    Args:
        embeddings: the .npy file (EMBEDDINGS).
        labels: the CSV file (LABELS).
        dataset: the input id (DATASET), the folder under ``features``.
        features: the cache root (FEATURES).
        log: where the closing line goes.

    Returns:
        The cache folder written.

    Raises:
        ImportRefused: any rule of the module docstring broken, with what to do.
    """
    from extract.cache import write_cache

    t0 = time.perf_counter()
    name = check_dataset(dataset)
    emb, dtype = read_embeddings(embeddings)
    rows = read_labels(labels, len(emb))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["path"])
    emb = emb[order]
    rows = [rows[i] for i in order]
    dim = int(emb.shape[1])
    for row, sha in zip(rows, vector_sha256(emb)):
        row.update(sha256=sha, size=4 * dim, mtime_ns="")
    meta = {
        "key": f"imported-{dim}", "backbone": "imported", "weights": "imported", "image_size": None,
        "pooling": None, "precision": "fp32", "dim": dim, "n": len(rows),
        "class_names": sorted({r["label"] for r in rows}),
        "input": str(Path(labels).resolve()), "input_id": name,
        "embeddings_file": str(Path(embeddings).resolve()), "source_dtype": dtype,
        "sha256_rule": "SHA-256 of the vector's float32 bytes",
        "computed": len(rows), "reused": 0, "rejected": 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    folder = write_cache(Path(features) / name, f"imported-{dim}", emb, rows, meta, [])
    log(f"imported {len(rows):,} vectors of {dim} dimensions ({dtype}), {len(meta['class_names'])} "
        f"classes -> {folder}")
    return folder


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify.importer", description=(
        "Import embeddings computed elsewhere as a cache: FEATURES/<DATASET>/imported-<dim>/."))
    p.add_argument("--embeddings", default="", help=".npy file, float (N, D) (EMBEDDINGS)")
    p.add_argument("--labels", default="", help="CSV path,label[,split], one row per vector (LABELS)")
    p.add_argument("--dataset", default="", help="name of the cache folder under FEATURES (DATASET)")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        import_embeddings(args.embeddings, args.labels, args.dataset, args.features)
    except ImportRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
