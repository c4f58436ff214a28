"""The answer of a comparison: one best head by one rule, tied heads, a table within 100 columns;
and the notices every stage-2 command prints before its numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from classify.answer import WIDTH, answer_of, compact_table, read_answer
from extract.notices import (class_counts_line, plural, random_weights_banner, split_like,
                              split_like_warning)


def table(**overrides) -> pd.DataFrame:
    rows = [
        dict(head="logreg", accuracy=0.70, accuracy_ci_low=0.65, accuracy_ci_high=0.75, cv_mean=0.71,
             cv_std=0.02, cv_ci_low=0.68, cv_ci_high=0.74, p_vs_best=0.001, verdict="worse",
             params="C=0.01", n_eval=300, n_train=1200),
        dict(head="svm", accuracy=0.80, accuracy_ci_low=0.75, accuracy_ci_high=0.84, cv_mean=0.79,
             cv_std=0.03, cv_ci_low=0.75, cv_ci_high=0.83, p_vs_best=1.0, verdict="best",
             params="C=1", n_eval=300, n_train=1200),
        dict(head="mlp", accuracy=0.82, accuracy_ci_low=0.77, accuracy_ci_high=0.86, cv_mean=0.78,
             cv_std=0.03, cv_ci_low=0.74, cv_ci_high=0.82, p_vs_best=0.4, verdict="tied",
             params="alpha=0.01", n_eval=300, n_train=1200),
    ]
    df = pd.DataFrame(rows)
    for col, value in overrides.items():
        df[col] = value
    return df


def test_the_best_head_is_the_verdicts_best_even_where_another_has_higher_accuracy():
    a = answer_of(table())
    assert a.best.head == "svm"  # mlp has the higher evaluated accuracy, svm the higher CV score
    assert [h.head for h in a.tied] == ["mlp"] and [h.head for h in a.worse] == ["logreg"]
    assert [h.head for h in a.ranked] == ["svm", "mlp", "logreg"]
    assert a.n_eval == 300 and a.n_train == 1200


def test_without_verdicts_the_highest_cv_mean_is_best_and_none_is_tied():
    df = table().drop(columns=["verdict"])
    a = answer_of(df)
    assert a.best.head == "svm" and not a.tied and {h.head for h in a.worse} == {"logreg", "mlp"}


def test_the_headline_names_the_best_head_its_intervals_and_the_tied_heads():
    line = answer_of(table()).headline()
    assert line.startswith("Best head: svm")
    assert "0.790 [0.750, 0.830]" in line and "0.800 [0.750, 0.840]" in line
    assert "300 evaluated images" in line and "Tied with it: mlp" in line
    lonely = answer_of(table().query("head != 'mlp'")).headline()
    assert "Tied" not in lonely and "Every other head is worse" in lonely


def test_the_console_table_puts_the_best_first_marked_and_fits_100_columns():
    text = compact_table(answer_of(table()))
    lines = text.splitlines()
    assert lines[1].startswith("* svm") and lines[2].startswith("  mlp") and lines[3].startswith("  logreg")
    assert all(len(line) <= WIDTH for line in lines)
    long = table(head=["a" * 60, "b" * 60, "c" * 60])
    assert all(len(line) <= WIDTH for line in compact_table(answer_of(long)).splitlines())


def test_a_table_that_is_not_compares_is_refused_with_its_columns(tmp_path):
    with pytest.raises(ValueError, match="lacks the column.*cv_mean.*received columns head, x"):
        answer_of(pd.DataFrame({"head": ["a"], "x": [1]}))
    with pytest.raises(ValueError, match="empty"):
        answer_of(pd.DataFrame())
    with pytest.raises(FileNotFoundError, match="run make compare first"):
        read_answer(tmp_path)
    table().to_csv(tmp_path / "comparison.csv", index=False)
    assert read_answer(tmp_path).best.head == "svm"


def test_class_counts_are_listed_and_many_classes_summarised():
    assert class_counts_line({"bees": 153, "ants": 1240}) == "classes (2): bees 153, ants 1,240"
    many = class_counts_line({f"c{i:02d}": 1 for i in range(20)})
    assert many.startswith("classes (20): c00 1,") and many.endswith("... and 8 more")


def test_split_like_class_names_draw_a_warning_naming_them():
    assert split_like(["cats", "Training", " testing ", "dogs"]) == ["Training", " testing "]
    text = split_like_warning(["training", "testing"])
    assert "training/ and testing/ look like split names" in text and "train/, test/" in text
    assert "class folder dev/ looks like a split name" in split_like_warning(["cats", "dev"])
    assert split_like_warning(["cats", "dogs"]) is None


def test_random_weights_are_announced_and_pretrained_ones_are_not():
    assert random_weights_banner("none").startswith("RANDOM WEIGHTS")
    assert "demo fell back" in random_weights_banner("imagenet", "imagenet unavailable")
    assert random_weights_banner("imagenet") is None
    assert random_weights_banner("/w/vgg16.h5") is None


def test_counts_take_the_right_number():
    assert plural(1, "duplicate pair") == "1 duplicate pair"
    assert plural(2, "duplicate pair") == "2 duplicate pairs"
    assert plural(1, "error") == "1 error" and plural(0, "error") == "0 errors"
    assert plural(3, "copy", "copies") == "3 copies"
