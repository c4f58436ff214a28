"""What `make features` says before and while it works: classes, misleading names, random
weights, loose files, and a progress estimate that leaves the model build out."""

from __future__ import annotations

import shutil

from conftest import colour_image, write_class_folder
from extract import Settings, extract_features

S32 = Settings(weights="none", size=32)


def _logs(in_dir, features, settings=S32, **kw) -> list[str]:
    logs: list[str] = []
    extract_features(in_dir, features, settings, batch=8, progress=False, log=logs.append, **kw)
    return logs


def test_classes_are_printed_with_their_counts_most_first(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 3, classes=("red",))
    write_class_folder(root, 5, classes=("blue",))
    logs = _logs(root, tmp_path / "f")
    assert "classes (2): blue 5, red 3" in logs


def test_split_like_class_folders_draw_a_warning_naming_both(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 3, classes=("red", "blue"))
    for name in ("red", "blue"):
        shutil.move(root / name, root / {"red": "training", "blue": "testing"}[name])
    (warning,) = [line for line in _logs(root, tmp_path / "f") if line.startswith("warning:")]
    assert "training/" in warning and "testing/" in warning and "train/" in warning


def test_random_weights_are_announced_and_pretrained_are_not(tmp_path, monkeypatch):
    root = tmp_path / "in"
    write_class_folder(root, 3)
    assert any(line.startswith("RANDOM WEIGHTS") for line in _logs(root, tmp_path / "f"))
    weights = tmp_path / "w.weights.h5"
    from extract.model import build

    build(S32).save_weights(weights)
    logs = _logs(root, tmp_path / "g", Settings(weights=str(weights), size=32))
    assert not any("RANDOM WEIGHTS" in line for line in logs)


def test_images_directly_in_the_input_are_told_to_go_into_class_folders(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 3)
    colour_image((200, 30, 30), 1).save(root / "loose.png")
    (root / "notes.txt").write_text("not an image")
    logs = _logs(root, tmp_path / "f")
    (loose,) = [line for line in logs if "loose.png" in line]
    assert "no class folder" in loose and "IN/<class>/" in loose and "1 file " in loose
    assert not any("notes.txt" in line and "class folder" in line for line in logs)


def test_the_progress_estimate_starts_after_the_model_is_built(tmp_path, monkeypatch):
    """The bar is made when the first file is done, never before the model exists."""
    import extract.model as model

    events: list[str] = []
    real_build, real_tqdm = model.build, __import__("tqdm").tqdm

    def build(*a, **k):
        events.append("build")
        return real_build(*a, **k)

    def tqdm(*a, **k):
        if not k.get("disable"):
            events.append(f"bar {k.get('desc')}")
        return real_tqdm(*a, **{**k, "file": open("/dev/null", "w")})

    monkeypatch.setattr(model, "build", build)
    monkeypatch.setattr("tqdm.tqdm", tqdm)
    root = tmp_path / "in"
    write_class_folder(root, 3)
    logs: list[str] = []
    fresh = Settings(weights="none", size=40)  # a model no earlier test in this process built
    extract_features(root, tmp_path / "f", fresh, batch=4, progress=True, log=logs.append)
    assert "build" in events
    bars = [e for e in events if e.startswith("bar reading and embedding")]
    assert bars and events.index("build") < events.index(bars[0])
    assert "6 files to read and embed; building vgg16 first" in logs
