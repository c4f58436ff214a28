"""List the images under an input folder, with their labels, splits and content hashes.

Layouts (the input folder is never modified):

- ``IN/<class>/**/<image>``: the class is the first folder level, sub-folders are allowed.
- ``IN/<split>/<class>/**/<image>``: used when *every* top-level folder is a split name
  (``train``, ``test``, ``valid``, ``val``, ``validation``, any case).

A file is an image candidate when its content starts like a JPEG, PNG, BMP, GIF or WebP file,
or when its name ends like one (so that a broken ``.jpg`` is reported, not ignored). Everything
else (``notes.txt``, ``Thumbs.db``) is skipped and counted. Hidden files and folders (a leading
``.``) are skipped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
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


@dataclasses.dataclass
class Candidate:
    """One file under the input folder that should become a row of the cache."""

    path: str  # relative to the input folder, POSIX separators, NFC-normalised
    label: str
    split: str
    abspath: str
    size: int
    mtime_ns: int
    sha256: str = ""


@dataclasses.dataclass
class Listing:
    """What :func:`list_images` found."""

    candidates: list[Candidate]
    rejected: list[tuple[str, str]]  # (path, reason) for files that cannot even be opened
    skipped: list[str]  # not images by name or content
    layout: str  # "class" or "split/class"
    empty_classes: list[str]


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


def is_image_candidate(path) -> bool:
    """True when a file is named like a supported image or its content starts like one."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return sniff(fh.read(16)) is not None
    except OSError:
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _rel(path: Path, root: Path) -> str:
    return unicodedata.normalize("NFC", path.relative_to(root).as_posix())


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
    tops = [p for p in root.iterdir() if not _hidden(p.name) and p.is_dir()]
    if tops and all(p.name.lower() in SPLIT_NAMES for p in tops):
        return "split/class"
    return "class"


def walk_files(folder: Path):
    """Yields every visible file below ``folder``, following folder links once (no loops)."""
    seen = set()
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
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if _hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            else:
                yield path


def _class_folders(root: Path, layout: str):
    """Yields (split, class name, folder) for each class folder of the layout."""
    if layout == "class":
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)):
            yield "", folder.name, folder
    else:
        for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)):
            split = split_dir.name.lower()
            for folder in sorted(
                p for p in split_dir.iterdir() if p.is_dir() and not _hidden(p.name)
            ):
                yield split, folder.name, folder


def list_images(root: str | os.PathLike) -> Listing:
    """Lists the image candidates under ``root`` with label and split, sorted by path.

    Files directly in ``root`` (or directly in a split folder) have no class and are skipped.

    Args:
        root: the input folder.

    Returns:
        A :class:`Listing`; hashes are not filled in yet (see :func:`fill_hashes`).

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
    """
    root = Path(root)
    layout = detect_layout(root)
    candidates, rejected, skipped, empty = [], [], [], []
    for split, label, folder in _class_folders(root, layout):
        found = 0
        for path in walk_files(folder):
            rel = _rel(path, root)
            try:
                st = path.stat()
            except OSError as err:
                reason = "broken or looping symbolic link" if path.is_symlink() else str(err)
                rejected.append((rel, f"cannot open: {reason}"))
                continue
            if not is_image_candidate(path):
                skipped.append(rel)
                continue
            found += 1
            candidates.append(
                Candidate(rel, label, split, str(path), st.st_size, st.st_mtime_ns)
            )
        if not found:
            empty.append(f"{split}/{label}" if split else label)
    # Files that do not sit in a class folder (directly in IN, or directly in a split folder).
    loose = [root]
    if layout == "split/class":
        loose += [p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)]
    for folder in loose:
        for child in sorted(folder.iterdir()):
            if child.is_file() and not _hidden(child.name):
                skipped.append(_rel(child, root))
    candidates.sort(key=lambda c: c.path)
    rejected.sort()
    return Listing(candidates, rejected, sorted(skipped), layout, empty)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Returns the hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fill_hashes(candidates: list[Candidate], known: dict[tuple[str, int, int], str]) -> list:
    """Fills ``sha256`` of each candidate, reusing ``known[(path, size, mtime_ns)]`` when present.

    Args:
        candidates: from :func:`list_images`.
        known: hashes from the previous manifest, keyed by path, size and modification time,
            so an unchanged folder is not read again.

    Returns:
        (path, reason) pairs for files that could not be read; those are removed from
        ``candidates``.
    """
    unreadable = []
    kept = []
    for cand in candidates:
        sha = known.get((cand.path, cand.size, cand.mtime_ns))
        if sha is None:
            try:
                sha = sha256_file(cand.abspath)
            except OSError as err:
                unreadable.append((cand.path, f"cannot read: {err.strerror or err}"))
                continue
        cand.sha256 = sha
        kept.append(cand)
    candidates[:] = kept
    return unreadable
