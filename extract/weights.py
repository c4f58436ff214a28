"""``make weights``: which file ``WEIGHTS=imagenet`` needs for every backbone, and where it goes.

Keras downloads each backbone's no-top ImageNet weights once into ``$KERAS_HOME/models/``
(``~/.keras/models/`` when ``KERAS_HOME`` is not set). On a machine without internet, download
the file elsewhere from the URL listed and copy it into that folder under the same name.
No TensorFlow is imported.

Usage::

    python -m extract.weights
"""

from __future__ import annotations

import sys

from .backbones import BACKBONES
from .model import keras_cache_file


def weights_status() -> list[dict]:
    """One row per backbone: ``backbone, file, present, path, url``.

    ``path`` is where Keras looks for the file (and where to copy it); ``present`` whether a
    non-empty file is there now.
    """
    rows = []
    for name, spec in BACKBONES.items():
        path = keras_cache_file(name)
        present = path.is_file() and path.stat().st_size > 0
        rows.append({"backbone": name, "file": spec.weights_file, "present": present,
                     "path": str(path), "url": spec.weights_url})
    return rows


def format_status(rows: list[dict]) -> str:
    """The rows of :func:`weights_status` as the text ``make weights`` prints."""
    width = max(len(r["backbone"]) for r in rows)
    lines = []
    for r in rows:
        state = "present" if r["present"] else "MISSING"
        lines.append(f"{r['backbone']:<{width}}  {state:<7}  {r['file']}")
    folder = keras_cache_file(rows[0]["backbone"]).parent
    missing = [r for r in rows if not r["present"]]
    lines.append("")
    lines.append(f"Keras' cache: {folder}/ (set KERAS_HOME to use <KERAS_HOME>/models/ instead).")
    if missing:
        lines.append("Offline: download each MISSING file on a machine with internet and copy it "
                     f"into {folder}/ under the same name (or pass WEIGHTS=<path to the file>):")
        lines.extend(f"  {r['url']}" for r in missing)
    return "\n".join(lines)


def main() -> int:
    print(format_status(weights_status()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
