"""What ``make compare`` prints: the classes, what could mislead, the answer first and a table
that fits a terminal, progress over its fits, and messages for settings that cannot work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from classify.answer import WIDTH
from helpers import fake_cache, run_compare


def _cli(features, out, *extra):
    """Runs ``python -m classify compare`` in this process on the fake cache under ``features``."""
    from classify.__main__ import main

    return main(["compare", "--features", str(features), "--dataset", "fake", "--weights", "none",
                 "--size", "64", "--out", str(out), "--folds", "3", "--jobs", "1", "--repeats", "1",
                 "--tune", "0", *extra])


def test_compare_prints_the_classes_with_their_counts(tmp_path):
    fake_cache(tmp_path / "f", ["ants"] * 14 + ["bees"] * 20)
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", log=logs.append, tune="0")
    assert "classes (2): bees 20, ants 14" in logs
    memory = next(i for i, line in enumerate(logs) if line.startswith("memory:"))
    assert logs.index("classes (2): bees 20, ants 14") == memory + 1  # right after the memory line


def test_split_like_class_folders_draw_a_warning_naming_both(tmp_path):
    fake_cache(tmp_path / "f", ["training"] * 15 + ["testing"] * 15)
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", log=logs.append, tune="0")
    warning = [line for line in logs if line.startswith("warning:") and "split name" in line]
    assert len(warning) == 1 and "testing/" in warning[0] and "training/" in warning[0]


def test_random_weights_draw_a_banner_and_pretrained_ones_do_not(tmp_path):
    fake_cache(tmp_path / "f", ["a"] * 15 + ["b"] * 15)  # the fake cache says weights "none"
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", log=logs.append, tune="0")
    assert sum(line.startswith("RANDOM WEIGHTS") for line in logs) == 1
    meta_path = next((tmp_path / "f").glob("*/*/meta.json"))
    meta = json.loads(meta_path.read_text())
    meta["weights"] = "imagenet"
    meta_path.write_text(json.dumps(meta))
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", log=logs.append, tune="0")
    assert not any(line.startswith("RANDOM WEIGHTS") for line in logs)


def test_the_console_ends_with_the_answer_and_a_table_best_first_within_100_columns(tmp_path, capsys,
                                                                                   monkeypatch):
    from classify import curves

    asked = []  # the more-data sentence is about the answer's best head, whatever the curves say
    sentence = curves.more_data_would_help
    monkeypatch.setattr(curves, "more_data_would_help",
                        lambda curve, best=None: asked.append(best) or sentence(curve, best))
    rng = np.random.default_rng(0)
    # one informative dimension among noise: the heads differ, so the order is tested
    labels = ["a"] * 30 + ["b"] * 30
    X = rng.normal(0, 1, (60, 24))
    X[:, 0] += np.where(np.array(labels) == "a", 1.2, -1.2)
    fake_cache(tmp_path / "f", labels, X=X)
    assert _cli(tmp_path / "f", tmp_path / "o") == 0
    text = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "o" / "comparison.csv")
    best = table.loc[table["cv_mean"].idxmax(), "head"]
    tail = text[text.index("Best head:"):text.index("(* best")].splitlines()
    assert tail[0].startswith(f"Best head: {best},")
    header = next(i for i, line in enumerate(tail) if line.lstrip().startswith("head"))
    rows = tail[header + 1:header + 1 + len(table)]
    assert rows[0].startswith(f"* {best} ")
    assert not any(r.startswith("*") for r in rows[1:])
    assert {r.lstrip("* ").split()[0] for r in rows} == set(table["head"])
    assert all(len(line) <= WIDTH for line in tail)
    assert len(table.columns) > 10  # the full table stays in comparison.csv
    more = [line for line in text.splitlines() if "'s score " in line]  # would more images help?
    assert len(more) == 1 and more[0].startswith(f"{best}'s score"), more  # about the same head
    assert asked == [best]


def test_run_json_records_the_answer_that_comparison_csv_gives(tmp_path):
    from classify.answer import read_answer

    fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 20)
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg,mlp", tune="0")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    answer = read_answer(tmp_path / "o")
    assert run["answer"]["best"] == answer.best.head
    assert run["answer"]["tied"] == [h.head for h in answer.tied]
    assert run["answer"]["headline"] == answer.headline()


def test_nested_tuning_says_it_is_the_slow_part_and_how_to_skip_it(tmp_path, monkeypatch):
    from classify import fits

    fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 20)
    monkeypatch.setattr(fits, "SLOW_AFTER_SECONDS", 0.0)  # as if the fits had taken long
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg,mlp", log=logs.append, tune="1", repeats=1)
    note = [line for line in logs if "tuning is the slow part" in line]
    assert len(note) == 1 and "TUNE=0" in note[0]
    memory = next(i for i, line in enumerate(logs) if line.startswith("memory:"))
    assert memory < logs.index(note[0]) < len(logs) - 1  # said during the fits, before the results
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg,mlp", log=logs.append, tune="0", repeats=1)
    assert not any("slow part" in line for line in logs)


def test_a_quick_tuned_run_does_not_call_itself_slow(tmp_path, monkeypatch):
    """On 40 images the note said "tuning is the slow part" of a run that took two seconds."""
    from classify import fits

    fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 20)
    monkeypatch.setattr(fits, "SLOW_AFTER_SECONDS", 600.0)
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg,mlp", log=logs.append, tune="1", repeats=1)
    assert not any("slow part" in line for line in logs)


def test_the_slow_note_comes_while_the_fits_still_run(monkeypatch):
    import threading

    from classify import fits

    monkeypatch.setattr(fits, "SLOW_AFTER_SECONDS", 0.05)
    said, go_on = [], threading.Event()

    def log(line):
        said.append(line)
        go_on.set()

    note = fits._SlowNote("tuning is the slow part", log)
    assert go_on.wait(30), "the note was not logged while the fits ran"
    note.finish()
    assert said == ["tuning is the slow part"]  # once, not again at the end


def test_fits_run_behind_a_progress_bar_on_stderr(tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kw):
            kw["disable"] = False
            super().__init__(*args, **kw)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 20)
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", tune="0", repeats=1)
    fits = [b for b in bars if b.unit == "fit"]
    assert len(fits) == 1 and fits[0].total == 3 + 1 and fits[0].n == fits[0].total  # 3 folds + final


def test_one_batch_mlp_fits_skip_the_shuffle_and_give_the_shuffled_fits_weights():
    from sklearn.neural_network import MLPClassifier

    from classify.heads import GroupedMLPClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (150, 20))
    y = (X[:, 0] + 0.5 * rng.normal(0, 1, 150) > 0).astype(int)
    copies = []

    class Recording(GroupedMLPClassifier):
        def _fit_stochastic(self, *args, **kw):
            copies.append(self.shuffle)
            return super()._fit_stochastic(*args, **kw)

    ours = Recording((16,), max_iter=50, random_state=0, early_stopping=False).fit(X, y)
    plain = MLPClassifier((16,), max_iter=50, random_state=0).fit(X, y)
    assert copies == [False] and ours.shuffle  # off during the fit, restored after
    np.testing.assert_allclose(ours.predict_proba(X), plain.predict_proba(X), rtol=1e-6, atol=1e-9)
    copies.clear()
    Recording((16,), max_iter=5, random_state=0, early_stopping=False).fit(np.vstack([X, X]), np.r_[y, y])
    assert copies == [True]  # 300 rows: two batches, shuffled as before


# --- messages -----------------------------------------------------------------------------------

def test_a_setting_without_cache_lists_the_cached_ones_as_ready_to_copy_commands(tmp_path):
    from classify.data import DataError
    from extract import Settings

    from classify import compare

    fake_cache(tmp_path / "f", ["a"] * 10 + ["b"] * 10)
    for settings in (Settings(weights="imagenet"), Settings("resnet50", "imagenet")):
        with pytest.raises(DataError) as err:
            compare(tmp_path / "f", settings, tmp_path / "o", dataset="fake", log=lambda *_: None)
        text = str(err.value)
        assert "SIZE=None" not in text
        expected = (f"make compare IN=in FEATURES={tmp_path / 'f'} BACKBONE=vgg16 WEIGHTS=none SIZE=64 "
                    "DATASET=fake")
        assert expected in [line.strip() for line in text.splitlines()], text
    assert "BACKBONE must be one of vgg16" in text and "'resnet50'" in text


def test_heads_with_spaces_after_the_commas_are_accepted(tmp_path, capsys):
    fake_cache(tmp_path / "f", ["a"] * 15 + ["b"] * 15)
    assert _cli(tmp_path / "f", tmp_path / "o", "--heads", "logreg, svm") == 0
    assert list(pd.read_csv(tmp_path / "o" / "comparison.csv")["head"]) == ["logreg", "svm"]


def test_the_makefile_passes_heads_with_spaces_as_one_value_and_test_size_only_when_given():
    import subprocess

    from conftest import ROOT

    def dry(*args):
        return subprocess.run(["make", "-n", "compare", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout

    assert '--heads "logreg, svm"' in dry("HEADS=logreg, svm")
    assert "--test-size" not in dry()
    assert "--test-size 0.3" in dry("TEST_SIZE=0.3")


def test_test_size_beside_split_folders_is_refused_naming_them(tmp_path, capsys):
    labels = ["a", "b"] * 20
    splits = ["train"] * 30 + ["test"] * 10
    fake_cache(tmp_path / "f", labels, splits=splits)
    assert _cli(tmp_path / "f", tmp_path / "o", "--test-size", "0.3") == 2
    err = capsys.readouterr().err
    assert "TEST_SIZE=0.3" in err and "test/, train/" in err and "leave TEST_SIZE out" in err
    assert not (tmp_path / "o").exists()
    assert _cli(tmp_path / "f", tmp_path / "o") == 0  # not given: the folders decide


def test_one_copy_across_the_split_is_counted_in_the_singular(tmp_path):
    labels = ["a", "b"] * 20
    splits = ["train"] * 30 + ["test"] * 10
    shas = [f"{i:064x}" for i in range(40)]
    shas[35] = shas[5]  # one evaluated image is a copy of a training image (both label b)
    fake_cache(tmp_path / "f", labels, shas=shas, splits=splits)
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", log=logs.append, tune="0")
    assert any(line.startswith("warning: 1 evaluated image is an exact copy of training images")
               for line in logs), logs


def test_a_tuned_mlp_on_few_rows_searches_hidden_units_at_the_fixed_alpha(monkeypatch):
    from classify.heads import INNER_FOLDS, GroupedMLPClassifier, fit_head, make_heads

    rng = np.random.default_rng(2)
    X = rng.normal(0, 1, (90, 8))
    y = np.where(X[:, 0] > 0, "a", "b")
    fitted = []
    real_fit = GroupedMLPClassifier.fit

    def counting(self, *args, **kw):
        fitted.append((self.hidden_layer_sizes, self.alpha))
        return real_fit(self, *args, **kw)

    monkeypatch.setattr(GroupedMLPClassifier, "fit", counting)
    fit_head(make_heads(0, tune=True)["mlp"], X, y)
    assert len(fitted) == 2 * INNER_FOLDS + 1  # 128 and 256 hidden units on each inner fold, the refit
    assert {alpha for _, alpha in fitted} == {1e-4}
    assert {h for h, _ in fitted} == {(128,), (256,)}
