"""Stage 1 on every Keras 3 backend: the same network (WEIGHTS=none drawn by NumPy), vectors
within 1e-4 of TensorFlow's in the same key, no framework for a run with nothing to embed, a
clear message for a backend that is not installed, and decoding in processes.

Keras runs one backend per process, so JAX and PyTorch run in child processes (each imports its
framework once: ``make features BACKEND=jax``, and the GPU benchmark's smoke run, whose PyTorch
and JAX caches are compared with TensorFlow's); their tests skip, saying why, where the package
is not installed (``make test`` installs JAX for the CPU from ``requirements-jax.txt``; PyTorch
is optional: ``pip install torch``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli, run_make, write_class_folder
from extract import Settings, extract_features, input_id, read_cache
from extract import framework, randinit

AGREE = 1e-4  # max |a - b| over max(1, max |a|): unit-scale vectors agree within 1e-4


def _quiet(*_a, **_k):
    pass


def _needs(module: str):
    if importlib.util.find_spec(module) is None:
        why = {"jax": "JAX is optional: `make test` installs it (requirements-jax.txt)",
               "torch": "PyTorch is optional: install it with `pip install torch` to test it"}[module]
        pytest.skip(f"{module} is not installed; {why}")


def _disagreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(a).max())))


@pytest.fixture(scope="module")
def thirty_two(tmp_path_factory) -> Path:
    """32 tiny images in two classes."""
    root = tmp_path_factory.mktemp("backends") / "in"
    write_class_folder(root, 16)
    return root


@pytest.fixture(scope="module")
def tf_cache(thirty_two, tmp_path_factory):
    """The TensorFlow cache of ``thirty_two`` (SIZE=32, WEIGHTS=none): (folder, vectors, rows)."""
    features = tmp_path_factory.mktemp("tf") / "features"
    s = extract_features(thirty_two, features, Settings(weights="none", size=32, backend="tensorflow"),
                         progress=False, log=_quiet)
    emb, rows, meta = read_cache(Path(s.folder))
    return Path(s.folder), emb, rows, meta


# ------------------------------------------------------------------------ WEIGHTS=none by NumPy

def test_random_weights_are_drawn_by_numpy_with_the_fixed_seed():
    """The first kernel of VGG16 is exactly the NumPy draw of its Glorot-uniform rule."""
    import keras

    from extract.model import build

    model = build(Settings(weights="none", size=32))
    first = model.weights[0]
    assert first.path.endswith("block1_conv1/kernel")
    want = randinit.draw(keras.initializers.GlorotUniform(), tuple(first.shape),
                         np.random.default_rng(randinit.INIT_SEED))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first.value), want)


def test_the_numpy_draws_follow_keras_distributions():
    import keras

    rng = np.random.default_rng(0)
    shape = (3, 3, 64, 128)
    assert randinit.fans(shape) == (576, 1152) and randinit.fans((10, 20)) == (10, 20)
    glorot = randinit.draw(keras.initializers.GlorotUniform(), shape, rng)
    limit = np.sqrt(6 / (576 + 1152))
    assert glorot.dtype == np.float32 and np.abs(glorot).max() <= limit
    assert abs(glorot.std() - limit / np.sqrt(3)) < 0.02 * limit
    he = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
    w = randinit.draw(he, shape, rng)
    std = np.sqrt(2.0 / 1152)
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978
    assert abs(w.std() - std) < 0.02 * std
    normal = randinit.draw(keras.initializers.HeNormal(), (1000, 100), rng)
    assert abs(normal.std() - np.sqrt(2 / 1000)) < 0.02 * np.sqrt(2 / 1000)


SURVIVORS = """
import keras, numpy as np
from extract.backbones import BACKBONES
from extract.model import Settings, _with_weights
from extract.randinit import set_numpy_weights
for name in {names!r}:
    settings = Settings(name, "none", BACKBONES[name].min_size).check()
    keras.utils.set_random_seed(1)
    model = _with_weights(settings, pooling="avg")
    built = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
    forgotten = 0
    for v, value in zip(model.weights, built):
        if value.size and not (value == value.flat[0]).all():  # drawn: forget its value
            v.assign(np.full(value.shape, 0.5, value.dtype))
            forgotten += 1
    keras.utils.set_random_seed(2)  # and every initialiser draws from another seed
    reseeded = 0
    layers = [model]
    while layers:
        layer = layers.pop()
        layers += getattr(layer, "layers", None) or []
        for value in vars(layer).values():
            if isinstance(value, keras.initializers.Initializer) and isinstance(
                    getattr(value, "seed", None), int):
                value.seed += 1
                reseeded += 1
    set_numpy_weights(model)
    again = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
    same = len(built) == len(again) > 0 and all(np.array_equal(a, b) for a, b in zip(built, again))
    print(name, len(built), forgotten, reseeded, same)
"""


def test_no_backend_drawn_value_survives_the_numpy_rule():
    """Every random variable of a built model is the NumPy rule's: with each drawn variable
    overwritten by a constant, the rule applied again under other Keras seeds (the global one
    and every initialiser's) gives back the built weights; a variable the backend drew would
    keep the constant, or be drawn again with another value. These backbones cover every layer
    kind of the registry. In a child process, so the test process does not keep the models'
    memory."""
    names = ["vgg16", "xception", "efficientnetv2b0", "convnexttiny", "mobilenetv3large", "densenet121"]
    r = subprocess.run([sys.executable, "-c", SURVIVORS.format(names=names)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == names
    assert all(int(forgotten) > 0 and int(reseeded) > 0 and same == "True"
               for _, n, forgotten, reseeded, same in rows), r.stdout


def test_a_random_initialiser_numpy_cannot_draw_is_refused():
    import keras

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3, kernel_initializer="random_normal", name="odd")(inp))
    with pytest.raises(ValueError, match="odd/kernel.*RandomNormal"):
        randinit.set_numpy_weights(model)


def test_caches_of_the_earlier_random_weights_are_never_reused(thirty_two, tf_cache, tmp_path):
    """Vectors of the backend-drawn random weights (key ...-none) are neither this input's cache
    nor shared by content with it: WEIGHTS=none computes every image again under ...-none-np1."""
    from extract.cache import write_cache

    folder, emb, rows, meta = tf_cache
    features = tmp_path / "features"
    old_key = "vgg16-avg-32-none"
    old_meta = dict(meta, key=old_key, weights_tag="none", init_rule=None, input=str(thirty_two))
    for root in (features / folder.parent.name, features / "another-input"):
        write_cache(root, old_key, emb + 1.0, rows, old_meta, [], dim=emb.shape[1])
    s = extract_features(thirty_two, features, Settings(weights="none", size=32), progress=False, log=_quiet)
    assert s.key == "vgg16-avg-32-none-np1" and Path(s.folder).name != old_key
    assert (s.computed, s.reused) == (32, 0)
    np.testing.assert_allclose(read_cache(Path(s.folder))[0], emb, atol=1e-6)


# ------------------------------------------------------------------------ the backends

def test_meta_records_the_backend_the_device_and_the_rule(tf_cache):
    meta = tf_cache[3]
    assert meta["backend"] == "tensorflow" and meta["init_rule"] == randinit.INIT_RULE
    assert meta["device"].startswith("CPU (") and "cores)" in meta["device"]
    assert meta["key"].endswith("-none-np1")


NO_OP = ("import sys\n"
         "from extract import Settings, extract_features\n"
         "s = extract_features({in_dir!r}, {features!r}, Settings(weights='none', size=32, "
         "backend={backend!r}), progress=False, log=lambda *a: None)\n"
         "print(s.computed, s.reused, *[m for m in ('tensorflow', 'jax', 'torch', 'keras') "
         "if m in sys.modules])")


def test_jax_through_make_adds_to_the_tensorflow_cache_and_agrees_with_it(thirty_two, tf_cache, tmp_path):
    """The backend is not part of the key: BACKEND=jax make features on TensorFlow's images and
    16 more embeds only the new ones, into the same key, within 1e-4 of TensorFlow's vectors;
    a run afterwards with nothing to embed imports neither JAX nor TensorFlow."""
    _needs("jax")
    import shutil

    folder, emb, rows, _ = tf_cache
    features = tmp_path / "features"
    shutil.copytree(folder.parents[1], features)
    in_dir = tmp_path / "in"
    shutil.copytree(thirty_two, in_dir)
    write_class_folder(in_dir, 8, start=90)
    r = run_make("features", f"IN={in_dir}", f"FEATURES={features}", "WEIGHTS=none", "SIZE=32",
                 "BACKEND=jax", env={"JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    (jax_folder,) = features.glob(f"{input_id(in_dir)}/vgg16-*")
    assert jax_folder.name == folder.name
    jax_emb, jax_rows, jax_meta = read_cache(jax_folder)
    assert jax_meta["backend"] == "jax" and (jax_meta["computed"], jax_meta["reused"]) == (16, 32)
    s = extract_features(in_dir, tmp_path / "tf", Settings(weights="none", size=32, backend="tensorflow"),
                         progress=False, log=_quiet)  # TensorFlow's vectors of all 48 images
    tf_emb, tf_rows, _ = read_cache(Path(s.folder))
    assert [r["sha256"] for r in jax_rows] == [r["sha256"] for r in tf_rows]
    old = {r["sha256"] for r in rows}
    new = [i for i, r in enumerate(jax_rows) if r["sha256"] not in old]
    assert len(new) == 16 and _disagreement(tf_emb[new], jax_emb[new]) <= AGREE
    assert _disagreement(tf_emb, jax_emb) <= AGREE
    code = NO_OP.format(in_dir=str(in_dir), features=str(features), backend="jax")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0", "48"]  # nothing computed, no framework, not even Keras


def test_a_backend_that_is_not_installed_names_its_install_command(thirty_two, tmp_path, monkeypatch, capsys):
    from extract.__main__ import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    with pytest.raises(framework.BackendUnavailable, match=r"BACKEND=jax needs jax.*requirements-jax\.txt"):
        framework.check("jax")
    code = main(["--in", str(thirty_two), "--features", str(tmp_path / "f"), "--weights", "none",
                 "--size", "32", "--backend", "jax", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install -r requirements-jax.txt" in err
    assert not (tmp_path / "f").exists()  # refused before anything is listed or written


def test_another_backend_in_a_process_running_tensorflow_is_refused(tf_cache, monkeypatch):
    import keras  # noqa: F401  (Keras runs on TensorFlow in this process)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real("numpy") if name == "torch" else real(name, *a))
    with pytest.raises(ValueError, match="already runs on tensorflow.*new process"):
        framework.check("torch")
    with pytest.raises(ValueError, match="BACKEND must be one of tensorflow, jax, torch; received 'mxnet'"):
        framework.check("mxnet")


def test_the_default_backend_is_tensorflow_unless_keras_backend_says(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert Settings().backend == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    s = Settings()
    assert s.backend == "jax" and s == Settings(backend="tensorflow") and s.key == Settings().key


TF32 = """
import importlib.util
from extract import framework
out = []
if importlib.util.find_spec("torch") is not None:
    import torch
    framework.allow_tf32("torch", True)
    out.append(torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32)
    framework.allow_tf32("torch", False)
    out.append(not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32)
if importlib.util.find_spec("jax") is not None:
    import jax
    framework.allow_tf32("jax", False)
    out.append(jax.config.jax_default_matmul_precision == "highest")
    framework.allow_tf32("jax", True)
    out.append(jax.config.jax_default_matmul_precision is None)
    seen = []  # models are built under one precision whatever the last use set (see framework.building)
    for allowed in (True, False):
        framework.allow_tf32("jax", allowed)
        with framework.building("jax"):
            seen.append(jax.config.jax_default_matmul_precision)
    out.append(seen[0] == seen[1] is not None)
print(len(out), all(out))
"""


def test_fp32_forbids_tf32_on_torch_and_jax():
    """fp32 means fp32: the process-wide TF32 switches follow the precision of each use, and JAX
    builds models under one precision whatever the last use set, so that a second build does not
    compile Keras' initialisers again (in a child process: importing PyTorch and JAX here would
    only add to this process's memory)."""
    if not any(importlib.util.find_spec(m) for m in ("torch", "jax")):
        pytest.skip("neither PyTorch nor JAX is installed")
    r = subprocess.run([sys.executable, "-c", TF32], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    n, ok = r.stdout.split()
    assert int(n) >= 2 and ok == "True"


def test_precision_auto_remembers_its_choice_per_backend():
    from extract.machine import machine_id

    assert machine_id("jax") != machine_id("tensorflow") and "| jax " in machine_id("jax")


# ------------------------------------------------------------------------ the model call

def test_one_batch_runs_on_the_device_while_the_next_is_gathered(monkeypatch):
    """Batch k+1 is launched before the vectors of batch k are fetched; every read gets its own."""
    from extract import backend
    from extract.calls import Call
    from extract.pipeline import Read

    events = []

    def launch(x):
        events.append(("launch", int(x[0, 0, 0, 0])))
        return x

    def fetch(x):
        events.append(("fetch", int(x[0, 0, 0, 0])))
        return x.reshape(len(x), -1)[:, :2].astype(np.float32)

    monkeypatch.setattr(backend, "embedder", lambda settings: Call(launch, fetch))
    monkeypatch.setattr(backend, "device_name", lambda name=None: "CPU (test)")
    reads = [Read(i, f"sha{i}", np.full((2, 2, 3), i, np.uint8), "", False) for i in range(5)]
    out = list(backend.embedded(reads, Settings(weights="none", size=32), 2, backend.Device(), log=_quiet))
    assert events == [("launch", 0), ("launch", 2), ("fetch", 0), ("launch", 4), ("fetch", 2), ("fetch", 4)]
    assert sorted((r.index, int(v[0])) for r, v in out) == [(i, i) for i in range(5)]


def test_the_compiled_call_takes_uint8_and_preprocesses_itself(tmp_path):
    """uint8 and float32 pixels give the same vectors, as does the NumPy preprocessing before
    a float model call: the preprocessing runs inside the call."""
    from extract.backend import embedder
    from extract.model import build, preprocess_fn

    settings = Settings(weights="none", size=32)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    run = embedder(settings)
    a, b = run(images), run(images.astype(np.float32))
    c = np.asarray(build(settings)(preprocess_fn("vgg16")(images.astype(np.float32)), training=False))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)


# ------------------------------------------------------------------------ decoding processes

def test_decoding_processes_give_the_same_cache_and_rejections(tmp_path):
    """Reading in a pool of processes gives the threads' cache: the same vectors, hashes and
    rejections (a damaged file's reason and lastingness survive the trip), copies embedded once."""
    from extract.decoders import decode_processes

    import shutil

    src = tmp_path / "in"
    write_class_folder(src, 20, fmt="jpg")
    (src / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    for i in range(3):  # copies of one new image, in different chunks
        shutil.copy(src / "blue" / "img_005.jpg", src / "red" / f"copy_{i}.jpg")
    results = []
    for n in (0, 2):
        s = extract_features(src, tmp_path / f"f{n}", Settings(weights="none", size=32),
                             progress=False, log=_quiet, decoders=n)
        results.append(read_cache(Path(s.folder)) + ((Path(s.folder) / "rejected.csv").read_text(),))
    (e0, r0, m0, rej0), (e1, r1, m1, rej1) = results
    np.testing.assert_array_equal(e0, e1)
    assert [r["sha256"] for r in r0] == [r["sha256"] for r in r1]
    assert "broken.jpg" in rej0 and rej0 == rej1 and m0["rejected_sha256"] == m1["rejected_sha256"]
    assert m0["computed"] == m1["computed"] == 40 and len(r1) == 43
    assert decode_processes(None, gpu=True, cores=16) == 14
    assert decode_processes(None, gpu=False, cores=16) == decode_processes(None, gpu=True, cores=2) == 0
    assert decode_processes(3, gpu=False) == 3
    with pytest.raises(ValueError, match="DECODERS"):
        decode_processes(-1, gpu=False)


def test_an_image_error_keeps_whether_it_lasts_across_processes():
    import pickle

    from extract.load import ImageError

    err = pickle.loads(pickle.dumps(ImageError("too large", lasting=False)))
    assert str(err) == "too large" and err.lasting is False


# ------------------------------------------------------------------------ the GPU benchmark

def test_gpu_figures_go_to_the_tracked_files_only_from_a_gpu(tmp_path):
    from bench import gpu

    args = gpu.parse(["--device", "cpu"])
    on_cpu = {"backends": {"jax": {"device": "CPU (x, 2 cores)"}, "torch": {"device": "GPU:0 (H100)"}}}
    json_path, md_path = gpu.outputs(args, on_cpu)
    assert json_path == ROOT / "bench" / "work" / "gpu-cpu.json" and md_path.parent == ROOT / "bench" / "work"
    on_gpu = {"backends": {"jax": {"device": "GPU:0 (H100)"}, "torch": {"device": "GPU:0 (H100)"}}}
    assert gpu.outputs(args, on_gpu) == (ROOT / "bench" / "gpu.json", ROOT / "BENCHMARKS.md")


def test_the_gpu_benchmark_runs_on_the_cpu_and_writes_outside_the_tracked_files(tmp_path):
    """``python -m bench.gpu --device cpu`` (a smoke test) measures every installed backend and
    writes its results where they cannot be taken for GPU figures. Each backend's fp32 cache of
    the benchmark's images (PyTorch's and JAX's ``extract_features`` in their own processes) holds
    TensorFlow's vectors within 1e-4, under TensorFlow's key."""
    backends = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
    if not backends:
        pytest.skip("neither JAX nor PyTorch is installed: bench.gpu measures those")
    out, md = tmp_path / "gpu.json", tmp_path / "BENCH.md"
    r = run_cli("bench.gpu", "--device", "cpu", "--images", "12", "--size", "32", "--batch", "4",
                "--backends", ",".join(backends), "--work", tmp_path / "work", "--json", out,
                "--md", md, "--no-compile", timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(out.read_text())
    for b in backends:
        got = results["backends"][b]
        assert got["device"].startswith("CPU (")
        assert got["bf16"]["model_only_ips"] > 0 and got["fp32"]["computed"] == 12
        assert 0.99 <= got["bf16_min_cosine"] <= 1.0
    assert results["decode"]["per_core_ips"] > 0
    assert results["summary"]["best_backend"] in backends
    text = md.read_text()
    assert text.count("<!-- bench.gpu: begin -->") == 1 and "model-only images/s" in text
    s = extract_features(tmp_path / "work" / "in", tmp_path / "tf", Settings(weights="none", size=32),
                         progress=False, log=_quiet)
    emb, rows, _ = read_cache(Path(s.folder))
    for b in backends:
        (folder,) = (tmp_path / "work" / f"f_{b}_fp32").glob(f"*/{s.key}")
        b_emb, b_rows, meta = read_cache(folder)
        assert meta["backend"] == b and meta["versions"].get(b) and meta["computed"] == 12
        assert [r["sha256"] for r in b_rows] == [r["sha256"] for r in rows]
        assert _disagreement(emb, b_emb) <= AGREE, b


def test_a_broken_decoding_pool_falls_back_to_the_run_s_own_thread(tmp_path, monkeypatch):
    """A pool whose processes die loses no file: the run reads the rest itself."""
    from extract import decoders
    from extract.pipeline import Claims

    src = tmp_path / "in"
    write_class_folder(src, 20, classes=("red",), fmt="jpg")
    paths = sorted(str(p) for p in src.rglob("*.jpg"))

    real_pool = decoders._pool

    def breaking(n):  # its one process exits at once: every chunk finds the pool broken
        pool = real_pool(n)
        pool.submit(os._exit, 1)
        return pool

    monkeypatch.setattr(decoders, "_pool", breaking)
    got = list(decoders.read_in_processes(paths, 32, 10**9, Claims(lambda sha: False), set(), 1, 16))
    assert [r.index for r in got] == list(range(20))
    assert all(r.image is not None and r.image.shape == (32, 32, 3) for r in got)


def test_the_decoding_processes_skip_contents_known_before_the_run(tmp_path):
    from extract import decoders
    from extract.pipeline import Claims

    src = tmp_path / "in"
    paths = [str(p) for p in write_class_folder(src, 4, classes=("red",), fmt="jpg")]
    import hashlib

    known = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths[:2]}
    known.add("00" * 32)  # a digest that ends in zero bytes is found too
    assert decoders.known_in(decoders.write_known({"ab" + "00" * 31}))("ab" + "00" * 31)
    got = list(decoders.read_in_processes(paths, 32, 10**9, Claims(lambda sha: False), known, 1, 16))
    assert [r.image is None for r in got] == [True, True, False, False]
    assert all(r.sha256 and not r.error for r in got)
