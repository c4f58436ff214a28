"""Nothing lost, nothing fatal: a bad-input corpus, interruptions, kill -9 and concurrent runs."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, colour_image, run_make, vectors_in, write_class_folder
from extract import ImageError, Settings, cache_folder, extract_features, load_image, read_cache
from extract.atomic import read_csv_rows
from helpers import run_main

S64 = Settings(weights="none", size=64)
RED, BLUE = (210, 40, 40), (40, 40, 210)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is not valid for that size)."""
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _exif_rotated(path: Path) -> None:
    """An 80x40 JPEG, left half red, right half blue, stored with EXIF orientation 6 (rotate 90 CW)."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = RED
    arr[:, 40:] = BLUE
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())


GOOD = {}  # relative path -> description, filled by make_corpus
REJECTED = {"red/empty.jpg": "empty file", "red/text.jpg": "not an image",
            "blue/truncated.jpg": "truncated", "blue/bomb.png": "too large"}


def make_corpus(root: Path) -> dict:
    """Writes good images beside every kind of bad input; returns {good path: what it is}."""
    write_class_folder(root, 4)
    good = {f"{c}/img_{i:03d}.png": "plain" for c in ("red", "blue") for i in range(4)}
    red, blue = root / "red", root / "blue"
    (red / "empty.jpg").write_bytes(b"")
    (red / "text.jpg").write_text("<html><body>404 Not Found</body></html>")
    buf = io.BytesIO()
    colour_image(BLUE, 5, size=(120, 120), noise=60).save(buf, "JPEG", quality=90)
    (blue / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (blue / "bomb.png").write_bytes(_png_with_size(20000, 20000))

    rgba = colour_image(RED, 11).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(red / "alpha.png")
    good["red/alpha.png"] = "RGBA"
    arr16 = (np.linspace(0, 65535, 48 * 40).reshape(48, 40)).astype(np.uint16)
    Image.fromarray(arr16).save(red / "grey16.png")
    good["red/grey16.png"] = "16-bit grey"
    colour_image(BLUE, 12).convert("P", palette=Image.ADAPTIVE).save(blue / "palette.gif")
    good["blue/palette.gif"] = "palette GIF"
    frames = [colour_image(BLUE, 20 + k).convert("P") for k in range(3)]
    frames[0].save(blue / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good["blue/animated.gif"] = "animated GIF"
    colour_image(RED, 13).convert("CMYK").save(red / "cmyk.jpg", "JPEG")
    good["red/cmyk.jpg"] = "CMYK JPEG"
    Image.new("RGB", (1, 1), RED).save(red / "one.png")
    good["red/one.png"] = "1x1"
    _exif_rotated(blue / "exif.jpg")
    good["blue/exif.jpg"] = "EXIF orientation"
    colour_image(RED, 14).save(red / "été photo (1).png")
    good["red/été photo (1).png"] = "space and accent"
    colour_image(BLUE, 15).save(blue / "日本, \"quoted\".webp", "WEBP")
    good['blue/日本, "quoted".webp'] = "non-ASCII, comma, quotes, WebP"
    colour_image(BLUE, 16).save(blue / "bitmap.bmp")
    good["blue/bitmap.bmp"] = "BMP"
    colour_image(RED, 17).save(red / "really_a_png.jpg", "PNG")
    good["red/really_a_png.jpg"] = "PNG named .jpg"
    (red / "deep" / "er").mkdir(parents=True)
    colour_image(RED, 18).save(red / "deep" / "er" / "nested.png")
    good["red/deep/er/nested.png"] = "nested"
    os.symlink(red / "img_000.png", red / "link.png")
    good["red/link.png"] = "symlink to an image"
    os.symlink(red / "loop_b.jpg", red / "loop_a.jpg")
    os.symlink(red / "loop_a.jpg", red / "loop_b.jpg")
    os.symlink(red, red / "deep" / "folder_loop")  # a folder link back up: must not recurse forever
    (red / ".hidden.png").write_bytes(b"not even an image")
    (root / ".DS_Store").write_bytes(b"\x00\x00")
    (red / "notes.txt").write_text("taken on a sunny day")
    (blue / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "green").mkdir()  # an empty class folder
    return good


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "in"
    good = make_corpus(root)
    return root, good


def test_features_keeps_every_good_image_and_explains_every_bad_one(corpus, tmp_path):
    """The command (its main, in this process) on a folder of every kind of bad file; make passes
    STRICT on to it."""
    root, good = corpus
    features = tmp_path / "features"
    args = ["--in", root, "--features", features, "--weights", "none", "--size", "64"]
    r = run_main("extract", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    folder = cache_folder(features, root, S64.key)
    emb, rows, meta = read_cache(folder)
    paths = [row["path"] for row in rows]
    assert set(good) <= set(paths), set(good) - set(paths)
    assert not any(".hidden" in p or "notes.txt" in p or "Thumbs" in p for p in paths)
    assert np.isfinite(emb).all() and emb.shape == (len(rows), 512)
    rejected = {row["path"]: row["reason"] for row in read_csv_rows(folder / "rejected.csv")}
    for path, words in REJECTED.items():
        assert words in rejected[path], (path, rejected.get(path))
    assert "symbolic link" in rejected["red/loop_a.jpg"]
    assert set(rejected) == set(REJECTED) | {"red/loop_a.jpg", "red/loop_b.jpg"}
    assert meta["skipped"] == 2  # notes.txt and Thumbs.db; hidden files are not counted
    assert meta["empty_classes"] == ["green"]
    out = r.stdout + r.stderr
    assert f"rejected {len(rejected)} files" in out and "rejected.csv" in out

    strict = run_main("extract", *args, "--strict", "1")
    assert strict.returncode != 0
    assert "STRICT=1" in strict.stderr + strict.stdout
    assert read_cache(folder)[0].shape == emb.shape  # the lists were still written
    dry = run_make("-n", "features", "STRICT=1", timeout=60)
    assert dry.returncode == 0 and "--strict 1" in dry.stdout, dry.stdout + dry.stderr


def test_every_colour_mode_becomes_rgb(corpus):
    root, good = corpus
    for path in good:
        arr = load_image(str(root / path), 32)
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, path
    grey16 = load_image(str(root / "red/grey16.png"), 32)
    assert 60 < grey16.mean() < 200  # 16-bit values scaled, not clipped to white
    alpha = load_image(str(root / "red/alpha.png"), 32).astype(int)
    assert (alpha[..., 0] > alpha[..., 2]).mean() > 0.9  # red laid on white, not on black
    assert alpha.mean() > 120


def test_exif_orientation_is_applied(corpus):
    root, _ = corpus
    arr = load_image(str(root / "blue/exif.jpg"), 40).astype(int)
    # Upright, the red half is on top and the blue half below.
    assert (arr[:5, :, 0] > arr[:5, :, 2] + 80).all()
    assert (arr[-5:, :, 2] > arr[-5:, :, 0] + 80).all()


def test_errors_name_the_rule(corpus):
    root, _ = corpus
    with pytest.raises(ImageError, match=r"empty file \(0 bytes\)"):
        load_image(str(root / "red/empty.jpg"), 32)
    with pytest.raises(ImageError, match="not an image: content is not JPEG, PNG"):
        load_image(str(root / "red/text.jpg"), 32)
    with pytest.raises(ImageError, match="truncated or damaged JPEG"):
        load_image(str(root / "blue/truncated.jpg"), 32)
    with pytest.raises(ImageError, match="20000x20000 .* raise MAX_PIXELS"):
        load_image(str(root / "blue/bomb.png"), 32)


def _start(in_dir, features, *extra, size=32, batch=4, pause_at=None):
    """Starts ``python -m extract`` as a command typed in a terminal: Ctrl-C (SIGINT) reaches it.

    ``pause_at``: the model batch at which the run waits until it is killed or interrupted
    (``EMBEDCMP_TEST_PAUSE_AT_BATCH``, see :func:`extract.backend.pause_for_tests`).

    A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    across exec, so a suite run as ``make test &`` would hand its children a deaf Ctrl-C.
    A signal with a handler is reset to its default on exec, so the child is started while this
    process has Python's own handler.
    """
    cmd = [sys.executable, "-m", "extract", "--in", str(in_dir), "--features", str(features),
           "--weights", "none", "--size", str(size), "--batch", str(batch), "--quiet",
           "--flush-seconds", "0", *map(str, extra)]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("EMBEDCMP_TEST_PAUSE_AT_BATCH", None)
        if pause_at is not None:
            env["EMBEDCMP_TEST_PAUSE_AT_BATCH"] = str(pause_at)
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for_shards(folder: Path, proc, minimum: int = 2, timeout: float = 180):
    """Waits until the partial folder holds at least ``minimum`` embedded vectors."""
    end = time.time() + timeout
    while time.time() < end:
        if folder.is_dir() and vectors_in(folder) >= minimum:
            return
        if proc.poll() is not None:
            pytest.fail(f"extraction ended before it could be interrupted: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("no partial batches appeared")


S_RUN = Settings(weights="none", size=32)  # the interrupted and concurrent runs' settings (_start's)


@pytest.fixture(scope="module")
def ninety(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupt")
    write_class_folder(base / "in", 45)
    ref = extract_features(base / "in", base / "reference", S_RUN, batch=4, progress=False,
                           log=lambda *_: None)
    return base, read_cache(Path(ref.folder))


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_interrupted_run_resumes_to_the_same_embeddings(ninety, tmp_path, how):
    base, (ref_emb, ref_rows, _) = ninety
    key = S_RUN.key
    features = tmp_path / "features"
    folder = cache_folder(features, base / "in", key)
    # the run waits at its 4th batch of 4 (of 23): at least the first is saved, most is ahead
    proc = _start(base / "in", features, pause_at=4)
    _wait_for_shards(folder.parent / ".partial" / key, proc, minimum=1)
    assert proc.poll() is None
    if how == "kill -9":
        proc.kill()
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if how == "Ctrl-C":
        assert proc.returncode == 130, err
        assert "interrupted" in err and "run the same command again to resume" in err
    assert not folder.exists()  # complete or absent, never half-written
    # the same command again, here (the killed run was the child process; this one need not be)
    again = extract_features(base / "in", features, S_RUN, batch=4, progress=False, log=lambda *_: None)
    assert Path(again.folder) == folder
    emb, rows, meta = read_cache(folder)
    assert 0 < meta["computed"] < len(ref_rows) and meta["reused"] == len(ref_rows) - meta["computed"]
    assert [r["path"] for r in rows] == [r["path"] for r in ref_rows]
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
    assert not (folder.parent / ".partial" / key).exists()


def test_two_runs_at_once_leave_one_valid_cache(ninety, tmp_path):
    base, (ref_emb, ref_rows, _) = ninety
    key = S_RUN.key
    features = tmp_path / "features"
    procs = [_start(base / "in", features) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    lines = [out.strip().splitlines()[-1] for out, _ in results]
    computed = sorted(int(line.split("computed ")[1].split(",")[0]) for line in lines)
    assert computed == [0, len(ref_rows)], lines  # the second waited, then found everything done
    assert any("waiting for it to finish" in out + err for out, err in results)
    folder = cache_folder(features, base / "in", key)
    emb, rows, _ = read_cache(folder)
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
    leftovers = [p.name for p in folder.parent.iterdir() if p.name not in (key, ".locks")]
    assert leftovers == []
