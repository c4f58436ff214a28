"""Promises made to users: the input folder is never modified, caches of the layout before input
folders are reused, `make clean` deletes OUT's contents only, OUT may not be home or the root,
and stage 2 (import, compare, audit) runs where TensorFlow cannot be imported."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli, run_make, write_class_folder
from helpers import FAST, S32, extract_quietly, quiet


def _snapshot(folder: Path) -> dict:
    """Every entry below ``folder``: its content hash (files), mode and modification time."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(folder))] = (digest, st.st_mode, st.st_mtime_ns, st.st_size)
    return out


def test_the_input_folder_is_never_modified(tmp_path):
    """features, compare, audit, predict and report read IN and write nothing into it."""
    from classify import compare, predict_images
    from classify.audit import audit

    in_dir = tmp_path / "in"
    write_class_folder(in_dir, 6, split="train")
    write_class_folder(in_dir, 3, split="test")
    (in_dir / "train" / "notes.txt").write_text("not an image")
    (in_dir / "test" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    before = _snapshot(in_dir)
    features, out = tmp_path / "features", tmp_path / "out"
    extract_quietly(in_dir, features, S32)
    compare(features, S32, out, heads="logreg", folds=3, jobs=1, in_dir=in_dir, log=quiet, **FAST)
    audit(features, S32, out, heads="logreg", folds=3, jobs=1, in_dir=in_dir, log=quiet)
    predict_images([in_dir / "test"], features, out, write=True, log=quiet)
    from classify.report import build_report

    build_report(in_dir, features, out, log=quiet)
    assert _snapshot(in_dir) == before


def test_a_cache_of_the_layout_before_input_folders_is_reused(two_class, tmp_path):
    """FEATURES/<key>/ (no input-id folder, as written before input folders existed): its
    vectors are found by content, nothing is embedded again, and they are the same vectors."""
    features = tmp_path / "features"
    first = extract_quietly(two_class, features, S32)
    cached = np.load(Path(first.folder) / "embeddings.npy")
    legacy = features / S32.key
    shutil.move(first.folder, legacy)
    shutil.rmtree(Path(first.folder).parent)
    again = extract_quietly(two_class, features, S32)
    assert (again.computed, again.reused) == (0, 20)
    np.testing.assert_array_equal(np.load(Path(again.folder) / "embeddings.npy"), cached)


def test_make_clean_deletes_what_is_in_out_and_nothing_else(tmp_path):
    out, features = tmp_path / "out", tmp_path / "features"
    (out / "reports").mkdir(parents=True)
    (out / "comparison.csv").write_text("head\n")
    (out / ".dups").mkdir()
    (out / ".dups" / "x.npz").write_bytes(b"x")
    (out / ".keep-me").write_text("a hidden file of the user's")
    (features / "in-1234abcd").mkdir(parents=True)
    (tmp_path / "beside.txt").write_text("beside OUT")
    res = run_make("clean", f"OUT={out}", f"FEATURES={features}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.is_dir() and sorted(p.name for p in out.iterdir()) == [".keep-me"]
    assert (features / "in-1234abcd").is_dir() and (tmp_path / "beside.txt").is_file()
    res = run_make("clean", "OUT= ")
    assert res.returncode != 0 and "OUT is empty" in res.stdout + res.stderr


@pytest.mark.parametrize("where", ["home", "root"])
def test_out_may_not_be_the_home_folder_or_the_root(where, tmp_path, monkeypatch):
    from classify.data import DataError
    from classify.outdir import check_out_dir

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    target = home if where == "home" else Path(Path.cwd().anchor)
    with pytest.raises(DataError, match=r"OUT=.* the home folder or the root; .* pass OUT=out"):
        check_out_dir(target)
    assert check_out_dir(tmp_path / "out") == tmp_path / "out"  # a folder of its own is fine
    assert home.is_dir() and not any(home.iterdir())


def test_stage_2_runs_where_tensorflow_cannot_be_imported(tmp_path):
    """`make import`, `make compare` and `make audit` on imported vectors, in child processes in
    which `import tensorflow` and `import keras` raise ImportError."""
    blocker = tmp_path / "blocked"
    for name in ("tensorflow", "keras"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"raise ImportError('{name} is made unimportable by this test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    probe = run_cli("tensorflow", env=env)  # the block works
    assert probe.returncode != 0 and "made unimportable by this test" in probe.stderr

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (2, 8))
    labels = ["cat", "dog"] * 20
    emb = np.stack([centres[i % 2] + rng.normal(0, 1, 8) for i in range(40)]).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    (tmp_path / "labels.csv").write_text(
        "path,label\n" + "".join(f"img_{i:03d}.jpg,{lab}\n" for i, lab in enumerate(labels)))
    features, out = tmp_path / "features", tmp_path / "out"
    common = ["--features", str(features), "--dataset", "ext", "--backbone", "imported", "--out", str(out),
              "--heads", "logreg", "--folds", "3", "--jobs", "1"]
    # the three commands' mains in turn, in one child (one start-up instead of three)
    script = (
        "import sys\n"
        "from classify.importer import main as import_main\n"
        "from classify.__main__ import main as compare_main\n"
        "from classify.audit import main as audit_main\n"
        f"print('import', import_main({['--embeddings', str(tmp_path / 'emb.npy'), '--labels', str(tmp_path / 'labels.csv'), '--dataset', 'ext', '--features', str(features)]!r}))\n"
        f"print('compare', compare_main({['compare', *common, '--tune', '0', '--repeats', '1']!r}))\n"
        f"print('audit', audit_main({common!r}))\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(ROOT)])))
    assert res.returncode == 0, res.stdout + res.stderr
    assert [line for line in res.stdout.splitlines()
            if line.startswith(("import ", "compare ", "audit "))] == ["import 0", "compare 0", "audit 0"]
    assert res.stdout.splitlines()[-1] == "False False"
    assert (out / "comparison.csv").read_text().splitlines()[1].startswith("logreg,")
    assert any((out / "audit").iterdir())
