"""Write the demo's input: scikit-learn's bundled digits (1,797 real 8x8 scans) as PNG files.

``python -m classify.demo DIR [N]`` writes ``DIR/<digit>/<index>.png`` (the first N digits when N
is given: a quicker demo); files already there are kept, so a second run writes nothing. The
demo never touches ``in/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder, limit: int | None = None) -> int:
    """Writes the digits under ``folder``; returns how many files were written.

    Args:
        folder: where the class folders go.
        limit: only the first ``limit`` digits (None: all 1,797).

    Raises:
        ValueError: ``limit`` below 20 (two of each class are needed to compare heads).
    """
    if limit is not None and limit < 20:
        raise ValueError(f"DEMO_IMAGES must be at least 20 (two per digit) or empty for all; received {limit}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = Path(folder)
    written = 0
    for i, (img, label) in enumerate(zip(digits.images[:limit], digits.target[:limit])):
        path = folder / str(label) / f"{i:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.round(img * (255 / 16)).astype(np.uint8)  # 0..16 ink levels -> 0..255
        Image.fromarray(pixels, "L").save(path)
        written += 1
    return written


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = argv[0] if argv else "demo/in"
    limit = int(argv[1]) if len(argv) > 1 and argv[1].strip() else None
    n = write_digits(folder, limit)
    held = "scikit-learn's 1,797 digits" if limit is None else f"the first {limit:,} of scikit-learn's digits"
    print(f"demo input: {folder}/ holds {held} (10 classes), {n} written now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
