"""Files written whole or not at all: a temporary name in the same folder, then a rename.

Readers see the old file or the new one, never a part; a crash leaves no partial file. CSV and
JSON writers on top, the reader of those CSV files, and the one message for a failed write
(what, where, how many bytes it needs when the disk is full, and what to do).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import uuid
from pathlib import Path


class CacheWriteError(RuntimeError):
    """The cache cannot be written (disk full, read-only, not a folder); the old one is intact.

    Attributes:
        folder: where the write failed.
        reason: the system's reason (``No space left on device``).
        no_space: True when the disk (or a quota) is full.
        needed: for a full disk, what the run needs free, in words (or None).
    """

    def __init__(self, folder, reason: str, no_space: bool = False, needed: str | None = None):
        self.folder, self.reason, self.no_space, self.needed = folder, reason, no_space, needed
        super().__init__(self._message())

    def _message(self) -> str:
        space = ""
        if self.no_space and self.needed:
            free = free_bytes(self.folder)
            space = f"; the run needs {self.needed}" + (
                f", and {human_bytes(free)} are free there" if free is not None else "")
        return (f"cannot write the feature cache under {self.folder} ({self.reason}){space}; the "
                "previous cache there, if any, is intact. Free disk space, fix the folder's "
                "permissions, or choose another FEATURES=<writable folder>, then run the same "
                "command again (finished batches are kept when they could be written)")

    def needing(self, needed: str) -> "CacheWriteError":
        """The same failure, saying what must be free when the disk is full."""
        return CacheWriteError(self.folder, self.reason, self.no_space, needed)


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``512 bytes``, ``43.1 KB``, ``2.05 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{int(n)} bytes"


def free_bytes(folder) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure(folder, err: OSError) -> CacheWriteError:
    """The :class:`CacheWriteError` for ``err``, raised by a write under ``folder``."""
    no_space = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    return CacheWriteError(folder, err.strerror or str(err), no_space)


def atomic_write(path, write) -> None:
    """Writes a file under a temporary name in its folder, then renames it into place.

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


def json_bytes(obj) -> bytes:
    """``obj`` as the indented JSON text :func:`write_json` writes."""
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    data = json_bytes(obj)
    atomic_write(Path(path), lambda fh: fh.write(data))


def csv_bytes(header: list[str], rows) -> bytes:
    """The UTF-8 CSV text :func:`write_csv` writes.

    Lines end in ``\\n``; the csv module then does not quote a field holding a lone ``\\r`` (a
    legal character in a file name), which readers take for a line break, so such a row is
    written with every field quoted.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for row in rows:
        has_cr = any(isinstance(v, str) and "\r" in v for v in row)
        (quoted if has_cr else writer).writerow(row)
    return buf.getvalue().encode("utf-8")


def write_csv(path: Path, header: list[str], rows) -> None:
    """Writes a UTF-8 CSV atomically (quoted as needed, so commas and quotes in paths survive)."""
    data = csv_bytes(header, rows)
    atomic_write(Path(path), lambda fh: fh.write(data))


def read_csv_rows(path: Path) -> list[dict]:
    """Reads a CSV written by :func:`write_csv` into a list of dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_csv_rows_head(path: Path, n: int) -> list[tuple[str, str]]:
    """The first ``n`` data rows of a two-column CSV (for messages), or [] when unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            return [tuple(row[:2]) for _, row in zip(range(n), reader)]
    except OSError:
        return []
