"""The resize rule of stage 1: the largest centred square, the first frame of an animation."""

from __future__ import annotations

import numpy as np
from PIL import Image

from extract.load import load_image

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def test_a_wide_image_is_centre_cropped_not_squashed(tmp_path):
    """120 x 40: a red and a blue band of 40 px at the sides, green in the middle 40 px. The
    centred square is the green part alone; squashing would keep red and blue at the edges."""
    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, :40], arr[:, 40:80], arr[:, 80:] = RED, GREEN, BLUE
    Image.fromarray(arr).save(tmp_path / "wide.png")
    tall = arr.transpose(1, 0, 2).copy()  # 40 x 120: the same along the other side
    Image.fromarray(tall).save(tmp_path / "tall.png")
    for name in ("wide.png", "tall.png"):
        out = load_image(tmp_path / name, 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        # the filter blends in a little of the pixels just outside the square at its edges
        assert (out[..., 1] > 150).all() and (out[..., [0, 2]] < 80).all(), (name, out[0, 0], out[-1, -1])


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (48, 48), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100,
                   loop=0)
    with Image.open(tmp_path / "anim.gif") as check:
        assert check.n_frames == 3
    out = load_image(tmp_path / "anim.gif", 32).reshape(-1, 3).astype(int)
    # GIF palettes quantise colours a little
    assert (np.abs(out - RED) <= 12).all(), out[0]
