"""Write the demo's input: scikit-learn's bundled digits (1,797 real 8x8 scans) as PNG files.

``python -m classify.demo DIR`` writes ``DIR/<digit>/<index>.png``; files already there are kept,
so a second run writes nothing. The demo never touches ``in/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder) -> int:
    """Writes the digits under ``folder``; returns how many files were written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = Path(folder)
    written = 0
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
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
    n = write_digits(folder)
    print(f"demo input: {folder}/ holds scikit-learn's 1,797 digits (10 classes), {n} written now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
