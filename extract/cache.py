"""The feature cache on disk: where each cache lives, reading one whole, writing one atomically.

Layout under ``FEATURES``::

    <input-id>/<key>/embeddings.npy    float32 (N, D); row i belongs to row i of manifest.csv
    <input-id>/<key>/manifest.csv      path,label,split,sha256 and the file's stamp:
                                       size,mtime_ns,inode,ctime_ns (sorted by path)
    <input-id>/<key>/meta.json         settings, counts, timing, device, versions, input, input_id
    <input-id>/<key>/rejected.csv      path,reason for every file that could not be embedded
    <input-id>/.partial/<key>/*.npz    finished batches of an unfinished run (:mod:`extract.shards`)
    <input-id>/.locks/<key>.lock       held while a run writes <input-id>/<key> (:mod:`extract.locks`)
    <input-id>/.tmp.<key>.<hex>/       a new cache being written (renamed to <key> when complete)
    <input-id>/.old.<key>.<hex>/       the previous cache, aside for the instant of the swap

``<input-id>`` is the input folder's name and 8 hex digits of the SHA-256 of its absolute path
(``in-3fa2c1d0``), or ``DATASET`` when given. Vectors are shared by content: any cache of the same
key under the same ``FEATURES`` serves an image with the same SHA-256. Temporary folders carry
the key between dots, which keys never contain, so recovery matches its own key exactly and never
touches another setting's work. A key folder is replaced by renaming a complete temporary
folder into place, so at every instant it is either complete or absent. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

# atomic_write and CacheWriteError are importable from here too, as before they had a module.
from .atomic import CacheWriteError, atomic_write, write_csv, write_failure, write_json  # noqa: F401
from .files import STAMP_FIELDS

MANIFEST_COLUMNS = ["path", "label", "split", "sha256", *STAMP_FIELDS]
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:4]
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


class CacheError(RuntimeError):
    """A cache folder that is missing pieces or disagrees with itself."""


def input_id(in_dir, dataset: str | None = None) -> str:
    """The name of an input's folder under ``FEATURES``.

    Args:
        in_dir: the input folder.
        dataset: ``DATASET``; when given it is the name, as it is.

    Returns:
        ``dataset``, or the folder's name, a dash and 8 hex digits of the SHA-256 of its
        absolute path (``in-3fa2c1d0``); characters other than letters, digits, ``.``, ``_`` and
        ``-`` in the name become ``_``.

    Raises:
        ValueError: ``dataset`` is not a plain folder name.
    """
    if dataset:
        if not _DATASET_NAME.fullmatch(dataset) or dataset in (".", ".."):
            raise ValueError(
                "DATASET must be a plain folder name of letters, digits, '.', '_' and '-' (up to "
                f"100, not starting with '.' or '-'); received {dataset!r}")
        return dataset
    absolute = os.path.abspath(os.fspath(in_dir))
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(absolute.rstrip(os.sep))).lstrip(".")
    return f"{name or 'input'}-{digest}"


def cache_folder(features, in_dir, key: str, dataset: str | None = None) -> Path:
    """``FEATURES/<input-id>/<key>``."""
    return Path(features) / input_id(in_dir, dataset) / key


def caches_of_key(features, key: str, exclude: Path | None = None) -> list[Path]:
    """Every complete-looking cache of ``key`` under ``features``, any input (for sharing).

    Includes a cache of the layout before input ids (``FEATURES/<key>/``), so vectors computed
    then are reused, not recomputed.
    """
    features = Path(features)
    found = [p.parent for p in sorted(features.glob(f"*/{key}/manifest.csv"))]
    if (features / key / "manifest.csv").is_file():
        found.append(features / key)
    skip = exclude.resolve() if exclude is not None else None
    return [p for p in found if p.resolve() != skip and not p.parent.name.startswith(".")]


def check_same_input(root: Path, in_dir, dataset: str | None) -> None:
    """Refuses to let ``DATASET`` take over the cache of another input folder that still exists.

    A ``DATASET`` name is the folder of one input under ``FEATURES``. Given to a second input,
    the run would replace the first input's cache with the second's. An input recorded there
    that no longer exists (a moved or renamed folder) is taken over: its cache is the one to
    keep up to date. Imported vectors (``make import``) record their labels file, not a folder.

    Raises:
        ValueError: another existing input folder's cache is under ``root``, naming both.
    """
    if not dataset:
        return  # a derived input id names one absolute path
    here = os.path.abspath(in_dir)
    for meta_file in sorted(Path(root).glob("*/meta.json")):
        if meta_file.parent.name.startswith("."):
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged cache is rebuilt by the run
        recorded = meta.get("input") if isinstance(meta, dict) else None
        if (not isinstance(recorded, str) or recorded == here or meta.get("backbone") == "imported"
                or not os.path.isdir(recorded) or _same_folder(recorded, here)):
            continue
        raise ValueError(
            f"DATASET={dataset} already holds the cache of another input folder, {recorded} "
            f"({meta_file.parent}); IN={in_dir} ({here}) would replace it. To replace it on "
            f"purpose, delete {root} first; to keep both, give this input another DATASET (or "
            "none: each input folder then gets its own)")


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _read_manifest(fh) -> pd.DataFrame:
    """Reads manifest.csv from an open file: strings as they are, labels and splits categorical."""
    df = pd.read_csv(fh, dtype=str, keep_default_na=False, na_filter=False)
    for col in ("label", "split"):
        if col in df:
            df[col] = df[col].astype("category")
    return df


def _open_npy(fh, mmap: bool) -> np.ndarray:
    """Reads (or memory-maps) the array of an open ``.npy`` file, this very file, by descriptor."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not one this tool writes")
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    if mmap:
        return np.memmap(fh, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                         order="F" if fortran else "C")
    count = int(np.prod(shape, dtype=np.int64))
    data = np.fromfile(fh, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"the file ends early: {data.size} of {count} values")
    return data.reshape(shape, order="F" if fortran else "C")


def open_cache(folder, mmap: bool = False, check_values: bool = True):
    """Reads and checks one cache folder; the manifest comes as a DataFrame.

    Args:
        folder: ``FEATURES/<input-id>/<key>``.
        mmap: memory-map the embeddings instead of reading them.
        check_values: refuse rows with NaN or infinite values (reads every vector; extraction
            skips it for its own previous cache, which it only ever wrote finite).

    Returns:
        ``(embeddings, manifest DataFrame, meta)``.

    Raises:
        FileNotFoundError: when the folder or one of its files is missing.
        CacheError: when the files disagree (row counts, dtype, shape, NaN rows).
    """
    folder = Path(folder)
    for name in ("embeddings.npy", "manifest.csv", "meta.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing")
    # Open all three before reading any, and map the vectors through the descriptor opened here:
    # if a writer swaps the folder meanwhile, the open files still belong to one version.
    with open(folder / "embeddings.npy", "rb") as f_emb, \
            open(folder / "manifest.csv", newline="", encoding="utf-8") as f_man, \
            open(folder / "meta.json", encoding="utf-8") as f_meta:
        manifest, meta, emb = _read_three(folder, f_emb, f_man, f_meta, mmap)
    _check_agree(folder, emb, manifest, meta)
    if check_values:
        bad = _non_finite_rows(emb)
        if bad.size:
            raise CacheError(
                f"{folder / 'embeddings.npy'} has {bad.size} rows with NaN or infinite values "
                f"(first: row {bad[0]}, {manifest['path'].iloc[bad[0]]!r}); run `make features` again"
            )
    return emb, manifest, meta


def _read_three(folder: Path, f_emb, f_man, f_meta, mmap: bool):
    """(manifest, meta, embeddings) read from the open files of one cache folder."""
    try:
        manifest = _read_manifest(f_man)
    except (ValueError, pd.errors.ParserError) as err:
        raise CacheError(f"{folder / 'manifest.csv'} cannot be read ({err}); run `make features` again") from None
    try:
        meta = json.load(f_meta)
    except ValueError as err:
        raise CacheError(f"{folder / 'meta.json'} is not valid JSON ({err}); run `make features` again") from None
    try:
        emb = _open_npy(f_emb, mmap)
    except Exception as err:
        raise CacheError(
            f"{folder / 'embeddings.npy'} cannot be read ({type(err).__name__}: {err}); "
            "it is damaged: run `make features` again to rebuild it"
        ) from None
    return manifest, meta, emb


def _check_agree(folder: Path, emb: np.ndarray, manifest: pd.DataFrame, meta) -> None:
    """Raises CacheError unless the three files of a cache agree with each other."""
    if not isinstance(meta, dict):
        raise CacheError(f"{folder / 'meta.json'} must hold a JSON object; run `make features` again")
    if emb.dtype != np.float32 or emb.ndim != 2:
        raise CacheError(
            f"{folder / 'embeddings.npy'} must be a 2-D float32 array; "
            f"received {emb.dtype} with shape {emb.shape}; run `make features` again"
        )
    if emb.shape[0] != len(manifest):
        raise CacheError(
            f"{folder}: embeddings.npy has {emb.shape[0]} rows but manifest.csv has {len(manifest)}; "
            "they must be row-aligned: run `make features` again to rebuild the cache"
        )
    if set(REQUIRED_COLUMNS) - set(manifest.columns):
        raise CacheError(f"{folder / 'manifest.csv'} lacks columns {REQUIRED_COLUMNS}")
    if meta.get("dim") not in (None, emb.shape[1]):
        raise CacheError(
            f"{folder}: meta.json says dim {meta.get('dim')} but embeddings.npy has {emb.shape[1]} columns"
        )


def _non_finite_rows(emb: np.ndarray, block: int = 65536) -> np.ndarray:
    """Rows with a NaN or infinite value, checked in blocks so a memory map is not read whole."""
    bad = [np.flatnonzero(~np.isfinite(emb[i:i + block]).all(axis=1)) + i
           for i in range(0, emb.shape[0], block)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def read_cache(folder: Path, mmap: bool = False):
    """Reads and checks one cache folder (see :func:`open_cache`); rows as a list of dicts.

    Returns:
        ``(embeddings, manifest rows, meta)``.
    """
    emb, manifest, meta = open_cache(folder, mmap=mmap)
    rows = manifest.astype({c: str for c in ("label", "split") if c in manifest}).to_dict("records")
    return emb, rows, meta


def _temp_name(kind: str, key: str) -> str:
    return f".{kind}.{key}.{uuid.uuid4().hex[:8]}"


def _own(kind: str, key: str, name: str) -> bool:
    """True when ``name`` is ``.<kind>.<key>.<hex>``: this key exactly, never a longer one."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "" and parts[1] == kind and parts[2] == key


def _fill(path: Path, n: int, dim: int, rows_of) -> None:
    """Writes an (n, dim) float32 ``.npy`` block by block: ``rows_of(start, stop)`` gives each.

    Plain writes, not a memory map: a full disk is an ``OSError`` here (through a map it is a
    SIGBUS that kills the process without a word), and the written pages are not counted in
    this process's resident memory.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": (n, dim)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, n, 65536):
            stop = min(n, start + 65536)
            block = np.ascontiguousarray(rows_of(start, stop), dtype=np.float32)
            if block.shape != (stop - start, dim):
                raise ValueError(f"rows {start}:{stop} have shape {block.shape}, expected "
                                 f"({stop - start}, {dim})")
            fh.write(memoryview(block).cast("B"))
        fh.flush()
        os.fsync(fh.fileno())


def embeddings_stamp(folder) -> list[int]:
    """``[size, mtime_ns]`` of a cache's embeddings.npy (meta.json records it when written)."""
    st = os.stat(Path(folder) / "embeddings.npy")
    return [st.st_size, st.st_mtime_ns]


def untouched(folder, meta: dict) -> bool:
    """True when embeddings.npy is the file this tool wrote (same size and modification time).

    A vector edited or damaged in place since then makes it False, and the rows are checked.
    """
    try:
        return meta.get("embeddings_stamp") == embeddings_stamp(folder)
    except OSError:
        return False


def non_finite_rows(folder, block: int = 16384) -> np.ndarray:
    """Rows of a cache's embeddings.npy with NaN or infinite values, read block by block.

    Plain reads, not a memory map, so checking a large cache does not grow resident memory.
    """
    bad = []
    with open(Path(folder) / "embeddings.npy", "rb") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        (n, dim), _, dtype = reader(fh)
        for start in range(0, n, block):
            rows = np.fromfile(fh, dtype=dtype, count=min(block, n - start) * dim).reshape(-1, dim)
            bad.append(np.flatnonzero(~np.isfinite(rows).all(axis=1)) + start)
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def write_cache(root: Path, key: str, emb, rows, meta: dict, rejected: list[tuple[str, str]],
                dim: int | None = None) -> Path:
    """Writes a complete key folder ``root/<key>`` and renames it into place.

    Args:
        root: ``FEATURES/<input-id>``.
        key: the setting's key.
        emb: the (N, D) vectors; or a function ``(start, stop) -> rows`` (then ``dim`` is
            needed), so a large cache is written block by block without a second copy in
            memory; or the path of an embeddings.npy that already holds exactly these rows,
            which is hard-linked (copied where links are not possible), not rewritten.
        rows: the manifest: a DataFrame or a list of dicts with :data:`MANIFEST_COLUMNS` (at
            least path, label, split, sha256).
        meta: written as meta.json.
        rejected: ``(path, reason)`` pairs.

    Raises:
        CacheWriteError: the folder cannot be written; the previous cache is left as it was.
    """
    root = Path(root)
    final = root / key
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    columns = [c for c in MANIFEST_COLUMNS if c in frame.columns] or REQUIRED_COLUMNS
    if isinstance(emb, Path):
        n, rows_of = len(frame), None
    elif callable(emb):
        n, rows_of = len(frame), emb
    else:
        arr = np.asarray(emb, dtype=np.float32)
        n, dim, rows_of = arr.shape[0], arr.shape[1], (lambda a, b: arr[a:b])
    old = tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / _temp_name("tmp", key)
        tmp.mkdir()
        if rows_of is None:
            _link_or_copy(emb, tmp / "embeddings.npy")
        else:
            _fill(tmp / "embeddings.npy", n, dim, rows_of)
        meta = dict(meta, embeddings_stamp=embeddings_stamp(tmp))
        write_csv(tmp / "manifest.csv", columns, frame[columns].itertuples(index=False, name=None))
        write_csv(tmp / "rejected.csv", ["path", "reason"], rejected)
        write_json(tmp / "meta.json", meta)
        os.chmod(tmp, 0o755)
        if final.exists():
            old = root / _temp_name("old", key)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise write_failure(root, err) from None
    finally:
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)  # interrupted between the two renames: put the old one back
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def recover(root: Path, key: str) -> list[str]:
    """Tidies what a process killed inside :func:`write_cache` can leave; call under the lock.

    A killed run may leave ``.tmp.<key>.<hex>`` (an unfinished new folder: deleted) and, between
    its two renames, ``.old.<key>.<hex>`` without ``<key>`` (the previous complete cache: put
    back). Names are matched exactly: another key's folders are never touched.

    Returns:
        What was done, for the log.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    notes = []
    entries = list(root.iterdir())
    olds = sorted((p for p in entries if _own("old", key, p.name)), key=lambda p: p.stat().st_mtime)
    if olds and not (root / key).exists():
        os.replace(olds.pop(), root / key)
        notes.append(f"restored the previous cache {root / key} left aside by a killed run")
    for stale in [*olds, *(p for p in entries if _own("tmp", key, p.name))]:
        shutil.rmtree(stale, ignore_errors=True)
    return notes
