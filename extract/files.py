"""List the images under an input folder, with their labels, splits and content hashes.

Layouts (the input folder is never modified):

- ``IN/<class>/**/<image>``: the class is the first folder level, sub-folders are allowed.
- ``IN/<split>/<class>/**/<image>``: used when *every* top-level folder is a split name
  (``train``, ``test``, ``valid``, ``val``, ``validation``, any case).

A file is an image candidate when its content starts like a JPEG, PNG, BMP, GIF or WebP file,
or when its name ends like one (so that a broken ``.jpg`` is reported, not ignored). Everything
else (``notes.txt``, ``Thumbs.db``) is skipped and counted. Hidden files and folders (a leading
``.``) are skipped silently. Only regular files are ever opened: a named pipe, socket or device
is rejected with its kind, never read (reading a pipe would wait for a writer forever).

Each candidate carries its stamp, ``(size, mtime_ns, inode, ctime_ns)``: a file with the stamp
recorded when it was hashed is taken to hold the same bytes. ``os.utime`` can set a file's times
back after changing it in place, but not its change time (ctime), which the kernel sets on every
write; the inode tells a file replaced by another with the same times apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import sys
from pathlib import Path

SPLIT_NAMES = ("train", "test", "valid", "val", "validation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp")

# Leading bytes of the supported formats (WebP: "RIFF" .... "WEBP").
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


STAMP_FIELDS = ("size", "mtime_ns", "inode", "ctime_ns")


@dataclasses.dataclass(slots=True)
class Candidate:
    """One file under the input folder that should become a row of the cache."""

    path: str  # relative to the input folder, POSIX separators, undecodable bytes as \xNN
    label: str
    split: str
    abspath: str
    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0

    @property
    def stamp(self) -> tuple[str, str, str, str]:
        """``(size, mtime_ns, inode, ctime_ns)`` as text, as manifest.csv holds them."""
        return (str(self.size), str(self.mtime_ns), str(self.inode), str(self.ctime_ns))

    def fields(self) -> dict:
        """The manifest fields of this file other than its hash."""
        return {"path": self.path, "label": self.label, "split": self.split, "size": self.size,
                "mtime_ns": self.mtime_ns, "inode": self.inode, "ctime_ns": self.ctime_ns}


@dataclasses.dataclass
class Listing:
    """What :func:`list_images` found."""

    candidates: list[Candidate]
    rejected: list[tuple[str, str]]  # (path, reason) for files and folders that cannot be opened
    skipped: list[str]  # not images by name or content, and the loose files
    layout: str  # "class" or "split/class"
    empty_classes: list[str]
    loose: list[str] = dataclasses.field(default_factory=list)  # images (by name) in no class folder


def sniff(head: bytes) -> str | None:
    """Returns the image format named by the first bytes of a file, or None.

    Args:
        head: at least the first 12 bytes of the file.
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


_SPECIAL = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
            (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def special_kind(mode: int) -> str | None:
    """None for a regular file; else what it is (``named pipe``, ``socket``, ...)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), "special file")


def not_regular_reason(kind: str) -> str:
    """The rejection reason of a file that is not a regular file."""
    return f"not a regular file ({kind}): not read; put the image file itself there"


def is_image_candidate(path) -> bool:
    """True when a file is named like a supported image or its content starts like one.

    Only a regular file is opened to look at its content.
    """
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        if special_kind(os.stat(path).st_mode) is not None:
            return False
        with open(path, "rb") as fh:
            return sniff(fh.read(16)) is not None
    except OSError:
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".")


def stored_name(name: str) -> str:
    """The text a file-system name is stored as: itself, or with undecodable bytes as ``\\xNN``.

    Python hands out a name that is not valid UTF-8 with its bad bytes as lone surrogates; those
    cannot be written to a UTF-8 CSV, so each becomes the four characters ``\\xNN``. In such a
    name a literal backslash becomes ``\\x5c`` too, so every backslash of the stored text starts
    an escape and :func:`fs_path` can undo it exactly.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape").replace(b"\\", b"\\x5c")
        return raw.decode("utf-8", "backslashreplace")


_ESCAPED = re.compile(rb"\\x([0-9a-f]{2})")


def fs_path(root, stored: str) -> str:
    """The real path of the file stored as ``stored`` (a manifest ``path``) under ``root``.

    Undoes :func:`stored_name` when the stored text does not name a file as it is.
    """
    plain = os.path.join(os.fspath(root), stored)
    if "\\x" not in stored or os.path.lexists(plain):
        return plain
    raw = _ESCAPED.sub(lambda m: bytes([int(m.group(1), 16)]), stored.encode("utf-8"))
    return os.path.join(os.fspath(root), os.fsdecode(raw))


def _rel(path: Path, root: Path) -> str:
    return stored_name(path.relative_to(root).as_posix())


def detect_layout(root: Path) -> str:
    """Returns ``"split/class"`` when every visible top-level folder is a split name.

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"input folder {str(root)!r} does not exist or is not a folder; "
            "put images in IN/<class>/<image> (or IN/<split>/<class>/<image>) or pass IN=<dir>"
        )
    try:
        tops = [p for p in root.iterdir() if not _hidden(p.name) and p.is_dir()]
    except OSError as err:
        raise FileNotFoundError(f"input folder {str(root)!r} cannot be listed ({err.strerror or err}); "
                                "check its permissions or pass IN=<dir>") from None
    if tops and all(p.name.lower() in SPLIT_NAMES for p in tops):
        return "split/class"
    return "class"


def _scandir(path):
    """``os.scandir``, sorted by name (one place, so tests can make a folder unreadable)."""
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _encloses(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def walk_files(folder: Path, unreadable: list | None = None, root: Path | None = None):
    """Yields every visible file below ``folder``, following folder links once (no loops).

    Args:
        folder: where to start.
        unreadable: when given, ``(folder, reason)`` is appended for every folder that cannot be
            listed (permissions, I/O errors), so its files are reported rather than lost silently.
        root: the input folder, when walking a class folder: a link to it or to a folder that
            holds it is not followed (it would list every class again under this one), and is
            reported in ``unreadable``.
    """
    seen = set()
    top = os.path.realpath(root) if root is not None else None
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            real = os.path.realpath(current)
        except OSError:
            continue
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = _scandir(current)
        except OSError as err:
            if unreadable is not None:
                unreadable.append((Path(current), f"cannot list folder: {err.strerror or err}"))
            continue
        for entry in entries:
            if _hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir and top is not None and entry.is_symlink() \
                    and _encloses(os.path.realpath(path), top):
                if unreadable is not None:
                    unreadable.append((path, "folder link to the input folder or above it (a loop): "
                                             "not followed"))
                continue
            if is_dir:
                stack.append(path)
            else:
                yield path


def _subfolders(folder: Path, unreadable: list) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted; an unlistable folder is noted, not fatal."""
    try:
        return [Path(e.path) for e in _scandir(folder)
                if not _hidden(e.name) and e.is_dir(follow_symlinks=True)]
    except OSError as err:
        unreadable.append((folder, f"cannot list folder: {err.strerror or err}"))
        return []


def _class_folders(root: Path, layout: str, unreadable: list):
    """Yields (split, class name, folder) for each class folder of the layout."""
    if layout == "class":
        for folder in _subfolders(root, unreadable):
            yield "", stored_name(folder.name), folder
    else:
        for split_dir in _subfolders(root, unreadable):
            split = stored_name(split_dir.name).lower()
            for folder in _subfolders(split_dir, unreadable):
                yield split, stored_name(folder.name), folder


def _loose_files(root: Path, layout: str) -> list[str]:
    """Files that sit in no class folder (directly in IN, or directly in a split folder)."""
    loose = [root]
    if layout == "split/class":
        loose += _subfolders(root, [])
    found = []
    for folder in loose:
        try:
            entries = _scandir(folder)
        except OSError:
            continue  # already reported as an unreadable folder
        found += [_rel(Path(e.path), root) for e in entries
                  if not _hidden(e.name) and not e.is_dir(follow_symlinks=True)]
    return found


def list_images(root: str | os.PathLike, progress: bool = False) -> Listing:
    """Lists the image candidates under ``root`` with label and split, sorted by path.

    Files directly in ``root`` (or directly in a split folder) have no class and are skipped.
    Folders that cannot be listed, files that cannot be opened and files that are not regular
    files are rejected with the reason.

    Args:
        root: the input folder.
        progress: count the files found on stderr when listing takes more than a second.

    Returns:
        A :class:`Listing`; hashes are not filled in (the extraction hashes the bytes it reads).

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
    """
    root = Path(root)
    layout = detect_layout(root)
    from tqdm import tqdm

    found = Listing([], [], [], layout, [])
    unreadable: list = []
    bar = tqdm(desc="listing", unit="file", disable=not progress, delay=1.0, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    for split, label, folder in _class_folders(root, layout, unreadable):
        if not _list_class(root, folder, split, label, found, unreadable, bar.update):
            found.empty_classes.append(f"{split}/{label}" if split else label)
    bar.close()
    found.rejected += [(_rel(folder, root) + "/", reason) for folder, reason in unreadable]
    found.candidates.sort(key=lambda c: c.path)
    found.candidates = _one_per_name(found.candidates, found.rejected)
    found.rejected.sort()
    loose = sorted(_loose_files(root, layout))
    found.loose = [path for path in loose if Path(path).suffix.lower() in IMAGE_SUFFIXES]
    found.skipped = sorted(found.skipped + loose)
    return found


def _list_class(root: Path, folder: Path, split: str, label: str, found: Listing,
                unreadable: list, tick) -> int:
    """Adds the files of one class folder to ``found``; returns how many candidates it holds."""
    count = 0
    for path in walk_files(folder, unreadable, root=root):
        tick(1)
        rel = _rel(path, root)
        try:
            st = path.stat()
        except OSError as err:
            reason = "broken or looping symbolic link" if path.is_symlink() else str(err)
            found.rejected.append((rel, f"cannot open: {reason}"))
            continue
        kind = special_kind(st.st_mode)
        if kind is not None:
            found.rejected.append((rel, not_regular_reason(kind)))
            continue
        if not is_image_candidate(path):
            found.skipped.append(rel)
            continue
        count += 1
        found.candidates.append(Candidate(rel, label, split, str(path), st.st_size,
                                          st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return count


def _one_per_name(candidates: list[Candidate], rejected: list) -> list[Candidate]:
    """Drops (and rejects) a candidate whose stored name equals the previous one's (sorted)."""
    kept = candidates[:1]
    for cand in candidates[1:]:
        if cand.path == kept[-1].path:  # two real names escaped to one text
            rejected.append((cand.path, f"its name is stored as the same text as another file's "
                                        f"({kept[-1].abspath!a} and {cand.abspath!a}); rename one"))
        else:
            kept.append(cand)
    return kept


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Returns the hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
