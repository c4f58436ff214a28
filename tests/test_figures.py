"""The figures of a comparison, read from the matplotlib objects before they are saved: nothing
covers a data mark, no label sits on another, and each axis and caption says what is drawn."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from classify import curves, figures
from classify.heads import make_heads

CLASSES = ["savory", "unsavory"]  # long names: wide tick labels, as in the photos that showed it


@pytest.fixture
def captured(monkeypatch):
    """Every figure handed to figures._save, drawn, by file name; nothing is written."""
    got = {}

    def keep(fig, path, caption=None, **_kw):
        fig.canvas.draw()
        got[path.name] = fig
        got[path.name + ":caption"] = caption
        return path.name

    monkeypatch.setattr(figures, "_save", keep)
    yield got
    import matplotlib.pyplot as plt

    for value in got.values():  # the figures were kept open for the test: close them
        if hasattr(value, "canvas"):
            plt.close(value)


def _fitted(early_stopping: bool = False, n: int = 80):
    rng = np.random.default_rng(0)
    y = np.array([CLASSES[i % 2] for i in range(n)])
    X = rng.normal(size=(n, 6)) + (y == CLASSES[1])[:, None] * 1.5
    models = make_heads(0)
    models["mlp"].set_params(mlpclassifier__early_stopping=early_stopping, mlpclassifier__max_iter=30)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = {name: m.fit(X, y) for name, m in models.items()}
    probas = {name: (m.predict_proba(X) if name != "svm" else m[-1].predict_proba(m[:-1].transform(X)))
              for name, m in fitted.items()}
    return fitted, probas, y


def _boxes(artists, renderer):
    return [a.get_window_extent(renderer) for a in artists if a.get_visible() and a.get_text()]


def test_intervals_legend_covers_no_interval(captured, tmp_path):
    """The head drawn last (lowest on the plot) with the lowest scores sat under the legend."""
    comparison = pd.DataFrame({
        "head": ["logreg", "svm", "mlp"], "verdict": ["best", "tied", "worse"],
        "accuracy": [0.84, 0.82, 0.62], "accuracy_ci_low": [0.78, 0.76, 0.55],
        "accuracy_ci_high": [0.89, 0.87, 0.69], "cv_mean": [0.86, 0.84, 0.64],
        "cv_ci_low": [0.82, 0.80, 0.58], "cv_ci_high": [0.90, 0.88, 0.70]})
    curves.plot_intervals(comparison, tmp_path / "intervals.png")
    fig = captured["intervals.png"]
    renderer = fig.canvas.get_renderer()
    legends = [leg for ax in fig.axes for leg in ([ax.get_legend()] if ax.get_legend() else [])] + fig.legends
    assert legends
    box = legends[0].get_window_extent(renderer)
    ax = fig.axes[0]
    points = []
    for line in ax.lines:  # markers and caps
        points.append(ax.transData.transform(np.column_stack(line.get_data())))
    for coll in ax.collections:  # the interval bars
        for seg in coll.get_segments():
            ends = ax.transData.transform(seg)
            points.append(np.linspace(ends[0], ends[-1], 50))
    pts = np.vstack(points)
    inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
    assert not inside.any(), f"{int(inside.sum())} points of the intervals lie under the legend"


def test_confusion_matrix_labels_do_not_collide(captured, tmp_path):
    """'True label' of the 2nd and 3rd panels sat on the tick labels of the panel beside them."""
    fitted, probas, y = _fitted()
    figures.write_figures(tmp_path, fitted, probas, y, CLASSES)
    fig = captured["confusion_matrices.png"]
    renderer = fig.canvas.get_renderer()
    texts = []  # (panel, box) of every axis label and tick label
    for k, ax in enumerate(fig.axes):
        labels = [ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
        texts += [(k, b) for b in _boxes(labels, renderer)]
    for (k1, a), (k2, b) in itertools.combinations(texts, 2):
        if k1 != k2:
            assert not a.overlaps(b), f"a label of panel {k1 + 1} overlaps one of panel {k2 + 1}"
    for k, ax in enumerate(fig.axes):
        frame = ax.get_window_extent(renderer)
        for j, b in texts:
            if j != k:
                assert not frame.overlaps(b), f"a label of panel {j + 1} lies on panel {k + 1}"


def test_roc_and_reliability_axes_name_the_positive_class(captured, tmp_path):
    fitted, probas, y = _fitted()
    figures.write_figures(tmp_path, fitted, probas, y, CLASSES)
    curves.reliability_diagram(probas, y, CLASSES, tmp_path / "reliability.png")
    for name in ("roc.png", "reliability.png"):
        ax = captured[name].axes[0]
        words = " ".join([ax.get_xlabel(), ax.get_ylabel(), ax.get_title()])
        assert ": 1)" not in words, (name, words)
        assert "unsavory" in ax.get_xlabel() + ax.get_ylabel(), (name, words)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_the_mlp_caption_promises_only_what_is_drawn(captured, tmp_path, early_stopping):
    fitted, probas, y = _fitted(early_stopping)
    figures.write_figures(tmp_path, fitted, probas, y, CLASSES)
    fig, caption = captured["mlp_history.png"], captured["mlp_history.png:caption"]
    drawn = [line.get_label() for ax in fig.axes for line in ax.lines]
    assert ("validation accuracy" in drawn) == early_stopping
    assert caption and ("validation" in caption) == early_stopping, caption


def test_every_figure_has_a_caption_without_its_file_name(captured, tmp_path):
    fitted, probas, y = _fitted()
    names = figures.write_figures(tmp_path, fitted, probas, y, CLASSES)
    names.append(curves.reliability_diagram(probas, y, CLASSES, tmp_path / "reliability.png"))
    curve = pd.DataFrame({"head": ["logreg"] * 2, "train_size": [20, 40], "score_mean": [0.7, 0.8],
                          "score_std": [0.05, 0.04], "n_folds": [3, 3], "settings": ["fixed"] * 2})
    names.append(curves.plot_learning_curves(curve, tmp_path / "learning_curve.png"))
    for name in names:
        caption = captured[name + ":caption"]
        assert caption and ".png" not in caption, (name, caption)
