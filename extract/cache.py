"""The feature cache on disk: one folder per input and setting, written atomically, resumable.

Layout under ``FEATURES``::

    <input-id>/<key>/embeddings.npy    float32 (N, D); row i belongs to row i of manifest.csv
    <input-id>/<key>/manifest.csv      path,label,split,sha256,size,mtime_ns (sorted by path)
    <input-id>/<key>/meta.json         settings, counts, timing, device, versions, input, input_id
    <input-id>/<key>/rejected.csv      path,reason for every file that could not be embedded
    <input-id>/.partial/<key>/*.npz    finished batches of an unfinished run: vectors by sha256,
                                       and the hashes of the files read (path, size, mtime_ns)
    <input-id>/.locks/<key>.lock       held while a run writes <input-id>/<key>
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

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "size", "mtime_ns"]
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:4]
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


class CacheError(RuntimeError):
    """A cache folder that is missing pieces or disagrees with itself."""


class CacheWriteError(RuntimeError):
    """The cache cannot be written (disk full, read-only, not a folder); the old one is intact."""


def write_failure(folder, err: OSError) -> CacheWriteError:
    """The message for a failed write under ``folder``: what, where, and what to do."""
    reason = err.strerror or str(err)
    return CacheWriteError(
        f"cannot write the feature cache under {folder} ({reason}); the previous cache there, if "
        "any, is intact. Free disk space, fix the folder's permissions, or choose another "
        "FEATURES=<writable folder>, then run the same command again (finished batches are kept "
        "when they could be written)"
    )


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


def atomic_write(path, write) -> None:
    """Writes a file under a temporary name in its folder, then renames it into place.

    Readers see the old file or the new one, never a part; a crash leaves no partial file.

    Args:
        path: the file to (re)write.
        write: called with the open binary temporary file; writes the content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write(Path(path), lambda fh: fh.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))


def write_csv(path: Path, header: list[str], rows) -> None:
    """Writes a UTF-8 CSV atomically (quoted as needed, so commas and quotes in paths survive).

    Lines end in ``\n``; the csv module then does not quote a field holding a lone ``\r`` (a
    legal character in a file name), which readers take for a line break, so such a row is
    written with every field quoted.
    """
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for row in rows:
        has_cr = any(isinstance(v, str) and "\r" in v for v in row)
        (quoted if has_cr else writer).writerow(row)
    atomic_write(Path(path), lambda fh: fh.write(buf.getvalue().encode("utf-8")))


def read_csv_rows(path: Path) -> list[dict]:
    """Reads a CSV written by :func:`write_csv` into a list of dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


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
    if check_values:
        bad = _non_finite_rows(emb)
        if bad.size:
            raise CacheError(
                f"{folder / 'embeddings.npy'} has {bad.size} rows with NaN or infinite values "
                f"(first: row {bad[0]}, {manifest['path'].iloc[bad[0]]!r}); run `make features` again"
            )
    return emb, manifest, meta


def _non_finite_rows(emb: np.ndarray, block: int = 65536) -> np.ndarray:
    """Rows with a NaN or infinite value, checked in blocks so a memory map is not read whole."""
    bad = [np.flatnonzero(~np.isfinite(emb[i:i + block]).all(axis=1)) + i
           for i in range(0, emb.shape[0], block)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def read_csv_rows_head(path: Path, n: int) -> list[tuple[str, str]]:
    """The first ``n`` data rows of a two-column CSV (for messages), or [] when unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            return [tuple(row[:2]) for _, row in zip(range(n), reader)]
    except OSError:
        return []


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


class Shards:
    """Finished work of a run, under ``<input-id>/.partial/<key>/`` until the cache is written.

    Each shard holds the vectors embedded since the last one (``sha256``, ``emb``), the hashes
    of every file read since then (``path``, ``size``, ``mtime_ns``, ``path_sha256``), and the
    key and input folder it belongs to. A resumed run takes the vectors of shards of its key
    (vectors are identified by content) and the hashes only of shards of its own input folder
    (a path, size and modification time say nothing of another folder's files).
    """

    def __init__(self, root: Path, key: str, dim: int | None = None, input_dir: str = ""):
        self.folder = Path(root) / ".partial" / key
        self.key = key
        self.dim = dim
        self.input = os.path.abspath(input_dir) if input_dir else ""
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
        self._count = 0

    def _read(self, path: Path):
        """(sha256, emb, seen or None) of one shard; raises CacheError when it is not usable."""
        with np.load(path, allow_pickle=False) as data:
            shas, emb = data["sha256"], data["emb"]
            key = str(data["key"]) if "key" in data else "(not recorded)"
            source = str(data["input"]) if "input" in data else ""
            seen = [data[k] for k in ("path", "size", "mtime_ns", "path_sha256")] \
                if "path" in data and source and source == self.input else None
        if key != self.key:
            raise CacheError(f"it belongs to the setting {key}, not {self.key}")
        if emb.ndim != 2 or emb.shape[0] != shas.shape[0] or emb.dtype != np.float32:
            raise CacheError(f"{shas.shape[0]} hashes for embeddings of shape {emb.shape}")
        if emb.shape[0] and self.dim is not None and emb.shape[1] != self.dim:
            raise CacheError(f"vectors {emb.shape[1]} wide, expected {self.dim}")
        if not np.isfinite(emb).all():
            raise CacheError("NaN or infinite values")
        return shas, emb, seen

    def load(self) -> tuple[dict[str, np.ndarray], dict[tuple[str, int, int], str], list[str]]:
        """Returns ({sha256: vector}, {(path, size, mtime_ns): sha256}, [warnings]).

        Unusable shards (damaged, of another key or none recorded, another width than the
        cache's) are deleted: their images are read and embedded again.
        """
        vectors, hashes, notes = {}, {}, []
        if not self.folder.is_dir():
            return vectors, hashes, notes
        for path in sorted(self.folder.glob("*.npz")):
            try:
                shas, emb, seen = self._read(path)
            except Exception as err:
                notes.append(f"unusable partial file {path.name} ({err}); its images are computed again")
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if emb.shape[0] and self.dim is None:
                self.dim = int(emb.shape[1])
            for sha, row in zip(shas.tolist(), emb):
                vectors[sha] = row
            if seen is not None:
                for p, size, mtime, sha in zip(*(a.tolist() for a in seen)):
                    hashes[(p, size, mtime)] = sha
        return vectors, hashes, notes

    def save(self, shas: list[str], emb: np.ndarray | None, seen: list[tuple[str, int, int, str]]) -> None:
        """Writes one shard atomically: vectors by hash, the hashes of the files read, key, input.

        Raises:
            CacheWriteError: the shard cannot be written.
        """
        if not shas and not seen:
            return
        self._count += 1
        path = self.folder / f"{self._run}-{self._count:05d}.npz"
        if emb is None or not len(shas):
            emb = np.zeros((0, self.dim or 0), np.float32)
        cols = list(zip(*seen)) if seen else [[], [], [], []]
        arrays = {
            "sha256": np.asarray(shas, dtype="U64"), "emb": np.asarray(emb, np.float32),
            "path": np.asarray(cols[0], dtype=str), "size": np.asarray(cols[1], np.int64),
            "mtime_ns": np.asarray(cols[2], np.int64), "path_sha256": np.asarray(cols[3], dtype="U64"),
            "key": np.asarray(self.key), "input": np.asarray(self.input),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda fh: np.savez(fh, **arrays))
        except OSError as err:
            raise write_failure(self.folder, err) from None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when no other key has partial work


@contextlib.contextmanager
def locked(root: Path, key: str, log=print):
    """Holds ``<input-id>/.locks/<key>.lock`` for the block; waits (saying so) while another run holds it.

    The lock is an OS file lock, so it is released when its process dies, even after ``kill -9``.

    Raises:
        CacheWriteError: the lock cannot be created (a read-only or full ``FEATURES``).
    """
    from filelock import FileLock, Timeout

    folder = Path(root) / ".locks"
    lock = FileLock(str(folder / f"{key}.lock"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another extraction is writing {Path(root) / key}; waiting for it to finish "
            "(Ctrl-C to stop waiting)")
        sys.stdout.flush()
        lock.acquire()
    except OSError as err:
        raise write_failure(root, err) from None
    try:
        yield
    finally:
        lock.release()
