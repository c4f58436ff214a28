"""Figures of a comparison, drawn with scikit-learn's displays on matplotlib (no screen needed).

Each figure is saved with its caption in the PNG's ``Description`` text field, written from what
was drawn (the MLP's figure mentions validation accuracy only when it draws it); the report shows
that caption under the figure (:func:`caption_of`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from extract.atomic import atomic_write  # noqa: E402

from .heads import labels_of  # noqa: E402


def _save(fig, path: Path, caption: str | None = None) -> str:
    """Writes ``fig`` to ``path`` (PNG, its caption in the ``Description`` field); returns the name."""
    metadata = {"Software": None, **({"Description": caption} if caption else {})}
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight",
                                              metadata=metadata))
    plt.close(fig)
    return path.name


def caption_of(path) -> str | None:
    """The caption saved in a figure's PNG (see :func:`_save`); None when it has none."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (getattr(im, "text", None) or {}).get("Description") or None
    except (OSError, ValueError):
        return None


def confusion_figure(models: dict, probas: dict, y_eval, class_names: list[str]):
    """(figure, caption): one confusion matrix per head, side by side, sharing the true-class axis
    (its label and tick labels drawn once, on the left, so they never sit on another panel)."""
    n = len(models)
    side = max(3.2, 0.45 * len(class_names) + 2)
    fig, axes = plt.subplots(1, n, figsize=(side * n, side + 0.6), squeeze=False, sharey=True,
                             layout="constrained")
    for k, (ax, name) in enumerate(zip(axes[0], models)):
        ConfusionMatrixDisplay.from_predictions(
            y_eval, labels_of(models[name], probas[name])[0], labels=class_names, ax=ax, colorbar=False,
            xticks_rotation=45 if len(class_names) > 4 else "horizontal")
        ax.set_title(name)
        if k:
            ax.set_ylabel("")
            ax.tick_params(labelleft=False)
    fig.suptitle("Confusion matrices on the evaluated images (rows: true, columns: predicted)")
    caption = (f"Confusion matrix of each head on the {len(y_eval):,} evaluated images: rows are the "
               "true class, columns the predicted one; the diagonal counts the right answers.")
    return fig, caption


def roc_figure(models: dict, probas: dict, y_eval, class_names: list[str]):
    """(figure, caption): every head's ROC curve, the second class as the positive one."""
    positive = class_names[1]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in models:
        RocCurveDisplay.from_predictions(np.asarray(y_eval).astype(str), probas[name][:, 1], name=name,
                                         ax=ax, pos_label=str(positive))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_title(f"ROC on the evaluated images, positive class {positive!r}")
    caption = (f"ROC curve of each head on the evaluated images, {positive!r} as the positive class: "
               "the share of its images found against the share of the other class taken for it, "
               "as the threshold moves; the area under the curve (AUC) is in the legend, 0.5 is chance.")
    return fig, caption


def mlp_history_figure(est):
    """(figure, caption) of a fitted ``MLPClassifier``: its training loss per epoch and, when it
    stopped early, its accuracy on the held-out early-stopping share."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = np.arange(1, len(est.loss_curve_) + 1)
    ax.plot(epochs, est.loss_curve_, label="training loss", c="C0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    validation = getattr(est, "validation_scores_", None)
    if validation is not None:
        ax2 = ax.twinx()
        ax2.plot(epochs, validation, label="validation accuracy", c="C1")
        ax2.set_ylabel("validation accuracy (early-stopping split)")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("MLP head: training history")
    caption = "The MLP head's training loss per epoch of its final fit"
    if validation is not None:
        share = getattr(est, "validation_fraction", 0.1)
        caption += (f", and its validation accuracy: on the {share:.0%} of the training images held "
                    "out for early stopping (it stopped when that no longer improved).")
    else:
        caption += " (it trained without early stopping, so no share was held out to draw)."
    return fig, caption


def write_figures(folder: Path, models: dict, probas: dict, y_eval: np.ndarray,
                  class_names: list[str]) -> list[str]:
    """Writes confusion_matrices.png, roc.png (two classes, both evaluated) and mlp_history.png
    (MLP head). ``probas``: {head: its probabilities on the evaluated images, columns in the
    order of ``class_names``}; a head's label is its most probable class, as in predictions.csv.

    Returns:
        The file names written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig, caption = confusion_figure(models, probas, y_eval, class_names)
    written = [_save(fig, folder / "confusion_matrices.png", caption)]
    if len(class_names) == 2 and len(set(np.asarray(y_eval))) == 2:  # a ROC needs both classes
        fig, caption = roc_figure(models, probas, y_eval, class_names)
        written.append(_save(fig, folder / "roc.png", caption))
    mlp = models.get("mlp")
    if mlp is not None:
        fig, caption = mlp_history_figure(mlp[-1])
        written.append(_save(fig, folder / "mlp_history.png", caption))
    return written
