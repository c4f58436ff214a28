"""Thumbnails of input images as ``data:`` URIs, cached on disk by content hash."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from extract.atomic import atomic_write

from .markup import data_uri, esc

THUMB_SIZE = 96


class Thumbs:
    """Thumbnails of the images under IN, made once and cached in ``cache_dir/<sha256>-<size>.jpg``.

    An image that cannot be read gets a grey placeholder, never a crash; :meth:`problem` then
    says why in a sentence the page shows.
    """

    def __init__(self, in_dir: Path, cache_dir: Path, sha_by_path: dict, size: int = THUMB_SIZE):
        self.in_dir, self.cache_dir, self.sha_by_path, self.size = Path(in_dir), Path(cache_dir), sha_by_path, size
        self.made = self.reused = self.failed = 0
        self.missing: list[str] = []  # files not found under IN
        self.broken: list[str] = []  # files found but not readable as images
        self._memo: dict[str, str] = {}
        self._placeholder = None

    def placeholder(self) -> str:
        if self._placeholder is None:
            from PIL import Image, ImageDraw

            img = Image.new("RGB", (self.size, self.size), (225, 225, 225))
            draw = ImageDraw.Draw(img)
            draw.line((0, 0, self.size, self.size), fill=(170, 170, 170), width=2)
            draw.line((0, self.size, self.size, 0), fill=(170, 170, 170), width=2)
            draw.text((6, self.size // 2 - 6), "unreadable", fill=(90, 90, 90))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            self._placeholder = data_uri(buf.getvalue(), "image/png")
        return self._placeholder

    def __call__(self, rel_path: str) -> str:
        if rel_path in self._memo:
            return self._memo[rel_path]
        uri = self._make(rel_path)
        self._memo[rel_path] = uri
        return uri

    def _fail(self, rel_path: str, missing: bool) -> str:
        self.failed += 1
        (self.missing if missing else self.broken).append(rel_path)
        return self.placeholder()

    def _make(self, rel_path: str) -> str:
        from PIL import Image

        from extract.files import fs_path
        from extract.load import load_image

        sha = self.sha_by_path.get(rel_path)
        cached = self.cache_dir / f"{sha}-{self.size}.jpg" if sha else None
        if cached is not None and cached.is_file():
            self.reused += 1
            return data_uri(cached.read_bytes(), "image/jpeg")
        path = Path(fs_path(self.in_dir, rel_path))
        try:
            raw = path.read_bytes()
        except OSError:
            return self._fail(rel_path, missing=True)
        if sha and hashlib.sha256(raw).hexdigest() != sha:  # another file under the same name
            return self._fail(rel_path, missing=False)
        sha = sha or hashlib.sha256(raw).hexdigest()
        try:
            arr = load_image(str(path), self.size)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=82)
        except Exception:  # an unreadable or vanished image gets a placeholder, never a crash
            return self._fail(rel_path, missing=False)
        data = buf.getvalue()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_dir / f"{sha}-{self.size}.jpg", lambda fh: fh.write(data))
        except OSError:
            pass
        self.made += 1
        return data_uri(data, "image/jpeg")

    def problem(self) -> str | None:
        """Why some thumbnails are grey placeholders, and what to pass; None when all were drawn."""
        if not self.failed:
            return None
        if not self.in_dir.is_dir():
            return (f"The images could not be drawn: IN={self.in_dir} is not a folder here. Pass the "
                    "folder the features were made from, e.g. make report IN=<that folder> "
                    f"OUT=<this run's OUT>.")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} image(s) are not under IN={self.in_dir} "
                         f"(e.g. {self.missing[0]}): moved or deleted since make features?")
        if self.broken:
            parts.append(f"{len(self.broken)} image(s) under IN={self.in_dir} could not be read as "
                         f"the image that was embedded (e.g. {self.broken[0]}): changed or damaged "
                         "since make features?")
        return " ".join(parts) + " Grey placeholders stand in for them."

    def problem_html(self) -> str:
        text = self.problem()
        return f'<p class="warn">{esc(text)}</p>' if text else ""
