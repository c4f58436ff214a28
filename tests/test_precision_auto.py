"""PRECISION=auto's memory, FEATURES/.precision.json: keyed by what changes the answer, read
without a deep-learning framework, every bad entry recalibrated with a warning naming the file."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_class_folder
from extract import Settings, extract_features, read_cache
from extract import precision as P

AUTO = Settings(weights="none", size=32, precision="auto")


@pytest.fixture
def calibrations(monkeypatch):
    """Replaces the timing by a fixed answer (fp32); records the images of every calibration."""
    seen: list[np.ndarray] = []

    def fake(settings, images, device, log=print):
        seen.append(np.asarray(images))
        return {"chosen": "fp32", "images_per_second": {"fp32": 10.0, "bf16": 5.0},
                "min_cosine": {"fp32": 1.0, "bf16": 0.9999}, "min_cosine_required": P.MIN_COSINE,
                "calibration_images": len(images), "seconds": 0.1, "device": device}

    monkeypatch.setattr(P, "calibrate", fake)
    return seen


def _run(in_dir, features, settings=AUTO, logs=None, **kw):
    return extract_features(in_dir, features, settings, progress=False,
                            log=(logs.append if logs is not None else lambda *_: None), **kw)


def _memory(features) -> Path:
    return Path(features) / ".precision.json"


def test_a_run_with_nothing_to_compute_resolves_auto_without_any_framework(two_class, tmp_path):
    features = tmp_path / "features"
    first = _run(two_class, features)  # calibrates for real, in this process
    code = ("import sys\n"
            "from extract import Settings, extract_features\n"
            f"s = extract_features({str(two_class)!r}, {str(features)!r}, "
            "Settings(weights='none', size=32, precision='auto'), progress=False, log=lambda *a: None)\n"
            "print(s.key, s.computed, s.reused, *[m in sys.modules for m in ('tensorflow', 'keras', 'jax', 'torch')])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [first.key, "0", "20", "False", "False", "False", "False"]


BAD_ENTRIES = {
    "an entry without chosen": lambda data: _each_entry(data, lambda e: {"images_per_second": {}}),
    "an unknown precision": lambda data: _each_entry(data, lambda e: dict(e, chosen="fp64")),
    "a list for a machine": lambda data: {m: [1, 2] for m in data},
    "a list for the whole file": lambda data: [data],
    "a number for an entry": lambda data: _each_entry(data, lambda e: 7),
}


def _each_entry(data: dict, change) -> dict:
    return {m: {k: change(v) for k, v in entries.items()} for m, entries in data.items()}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_a_bad_remembered_entry_is_recalibrated_with_a_warning(case, two_class, tmp_path, calibrations):
    features = tmp_path / "features"
    _run(two_class, features)
    path = _memory(features)
    path.write_text(json.dumps(BAD_ENTRIES[case](json.loads(path.read_text()))))
    logs: list[str] = []
    s = _run(two_class, features, logs=logs)
    assert s.key == Settings(weights="none", size=32).key and (s.computed, s.reused) == (0, 20)
    assert len(calibrations) == 2, "not calibrated again"
    warned = [m for m in logs if m.startswith("warning:") and str(path) in m]
    assert warned, logs
    assert not any("PRECISION must be" in m for m in logs)
    data = json.loads(path.read_text())  # written back whole and valid
    assert [e["chosen"] for entries in data.values() for e in entries.values()] == ["fp32"]


def test_a_damaged_memory_file_is_kept_aside_not_silently_replaced(two_class, tmp_path, calibrations):
    features = tmp_path / "features"
    _run(two_class, features)
    path = _memory(features)
    text = path.read_text()
    other = json.loads(text)
    other["another machine | no GPU | tensorflow 2.21.0"] = next(iter(other.values()))
    damaged = json.dumps(other)[:-20]  # truncated by a crash elsewhere
    path.write_text(damaged)
    logs: list[str] = []
    _run(two_class, features, logs=logs)
    warned = [m for m in logs if m.startswith("warning:") and str(path) in m]
    assert warned, logs
    kept = [p for p in features.iterdir() if p.is_file() and p.read_text() == damaged]
    assert kept and any(str(kept[0]) in m for m in warned), (kept, warned)
    assert json.loads(path.read_text())  # a valid file again


def test_a_full_disk_while_remembering_is_a_warning_not_a_traceback(two_class, tmp_path,
                                                                    calibrations, monkeypatch):
    real = os.replace

    def no_space(src, dst, *a, **k):
        if os.fspath(dst).endswith(".precision.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", no_space)
    logs: list[str] = []
    s = _run(two_class, tmp_path / "features", logs=logs)
    assert s.computed == 20 and s.key == Settings(weights="none", size=32).key
    assert any(m.startswith("warning:") and "No space left" in m and ".precision.json" in m
               for m in logs), logs


def test_the_remembered_choice_depends_on_layer_and_batch(two_class, tmp_path, calibrations):
    features = tmp_path / "features"
    _run(two_class, features)
    _run(two_class, features)
    assert len(calibrations) == 1
    _run(two_class, features, settings=Settings(weights="none", size=32, precision="auto",
                                                 layer="block4_pool"))
    assert len(calibrations) == 2
    _run(two_class, features, batch=8)
    assert len(calibrations) == 3


def test_calibration_images_come_from_every_class(tmp_path, calibrations):
    root = tmp_path / "in"
    write_class_folder(root, 10)  # blue sorts first: 10 blue images before any red one
    _run(root, tmp_path / "features")
    (images,) = calibrations
    red = images[..., 0].mean(axis=(1, 2)) > images[..., 2].mean(axis=(1, 2))
    assert 0 < red.sum() < len(images), red


def test_the_machine_is_named_by_cpu_model_and_the_flags_that_change_the_answer(monkeypatch, tmp_path):
    from extract import machine

    def cpuinfo(model: str, flags: str) -> str:
        return (f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n"
                f"flags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nmodel name\t: {model}\n")

    zen4 = machine.cpu_identity(cpuinfo("AMD EPYC 9R14 96-Core Processor", "avx512f avx512_bf16"))
    zen3 = machine.cpu_identity(cpuinfo("AMD EPYC 7R13 Processor", "avx512f"))
    spr = machine.cpu_identity(cpuinfo("Intel(R) Xeon(R) Platinum 8488C", "avx512_bf16 amx_bf16 amx_tile avx512_fp16"))
    icx = machine.cpu_identity(cpuinfo("Intel(R) Xeon(R) Platinum 8488C", "avx512_bf16 avx512_fp16"))
    assert "AMD EPYC 9R14 96-Core Processor" in zen4 and "avx512_bf16" in zen4
    assert len({zen4, zen3, spr, icx}) == 4
    assert "amx_bf16" in spr and "amx" not in icx and "sse2" not in spr

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert machine.gpu_names() == ["NVIDIA H100 80GB HBM3, 81559 MiB"]
    ident = machine.machine_id()
    assert "NVIDIA H100 80GB HBM3" in ident and "tensorflow" in ident


# ------------------------------------------------------------ the calibration itself

def test_auto_precision_calibrates_once_and_records_its_choice(two_class, tmp_path, monkeypatch):
    features = tmp_path / "features"
    logs = []
    s = extract_features(two_class, features, Settings(weights="none", size=32, precision="auto"),
                         progress=False, log=logs.append)
    _, _, meta = read_cache(Path(s.folder))
    info = meta["precision_auto"]
    assert info["chosen"] in ("fp32", "bf16") and meta["precision"] == info["chosen"]
    assert set(info["images_per_second"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in info["images_per_second"].values())
    assert info["min_cosine"]["fp32"] == pytest.approx(1.0, abs=1e-6)
    # the rule: the fastest precision whose vectors agree with fp32
    ok = [p for p, c in info["min_cosine"].items() if c >= P.MIN_COSINE]
    assert info["chosen"] == max(ok, key=info["images_per_second"].get)
    assert s.key == Settings(weights="none", size=32, precision=info["chosen"]).key
    assert "auto" not in s.key and any("PRECISION=auto" in m for m in logs)
    remembered = json.loads((features / ".precision.json").read_text())
    assert [v["chosen"] for m in remembered.values() for v in m.values()] == [info["chosen"]]

    monkeypatch.setattr(P, "calibrate", lambda *a, **k: pytest.fail("calibrated again"))
    again = extract_features(two_class, features, Settings(weights="none", size=32, precision="auto"),
                             progress=False, log=lambda *_: None)
    assert again.key == s.key and (again.computed, again.reused) == (0, 20)

    from classify.cli import settings_from
    import argparse

    args = argparse.Namespace(backbone="vgg16", weights="none", size=32, pooling="avg",
                              precision="auto", features=str(features))
    assert settings_from(args).key == s.key


def test_auto_precision_without_a_calibration_is_a_clear_stage_2_error(tmp_path):
    with pytest.raises(ValueError, match="PRECISION=auto.*make features PRECISION=auto"):
        P.resolved_without_calibrating(Settings(weights="none", size=32, precision="auto"), tmp_path)


def test_calibration_prefers_fp32_when_the_faster_one_disagrees(monkeypatch):
    """A faster precision whose vectors drift below the cosine bound is not chosen."""
    from extract import backend

    def fake_embedder(settings):
        def run(x):
            base = np.stack([x.reshape(len(x), -1)[:, :4].sum(1), np.ones(len(x))], 1)
            if settings.precision == "bf16":
                base = base[:, ::-1]  # fast but different: cosine far below the bound
            return base.astype(np.float32)
        return run

    monkeypatch.setattr(backend, "embedder", fake_embedder)
    monkeypatch.setattr(P, "TIMED_CALLS", 1)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    info = P.calibrate(Settings(weights="none", size=32), images, "CPU (2 cores)", log=lambda *_: None)
    assert info["min_cosine"]["bf16"] < P.MIN_COSINE and info["chosen"] == "fp32"
