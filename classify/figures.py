"""Figures of a comparison, drawn with scikit-learn's displays on matplotlib (no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from extract.atomic import atomic_write  # noqa: E402

from .heads import labels_of  # noqa: E402


def _save(fig, path: Path) -> str:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path.name


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
    written = []
    n = len(models)
    side = max(3.2, 0.45 * len(class_names) + 2)
    fig, axes = plt.subplots(1, n, figsize=(side * n, side + 0.4), squeeze=False)
    for ax, name in zip(axes[0], models):
        ConfusionMatrixDisplay.from_predictions(
            y_eval, labels_of(models[name], probas[name])[0], labels=class_names, ax=ax, colorbar=False,
            xticks_rotation=45 if len(class_names) > 4 else "horizontal")
        ax.set_title(name)
    fig.suptitle("Confusion matrices on the evaluated images (rows: true, columns: predicted)")
    written.append(_save(fig, folder / "confusion_matrices.png"))

    if len(class_names) == 2 and len(set(np.asarray(y_eval))) == 2:  # a ROC needs both classes
        fig, ax = plt.subplots(figsize=(5, 5))
        y_bin = (np.asarray(y_eval) == class_names[1]).astype(int)
        for name in models:
            RocCurveDisplay.from_predictions(y_bin, probas[name][:, 1], name=name, ax=ax, pos_label=1)
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set_title(f"ROC, positive class {class_names[1]!r}")
        written.append(_save(fig, folder / "roc.png"))

    mlp = models.get("mlp")
    if mlp is not None:
        est = mlp[-1]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        epochs = np.arange(1, len(est.loss_curve_) + 1)
        ax.plot(epochs, est.loss_curve_, label="training loss", c="C0")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if getattr(est, "validation_scores_", None) is not None:
            ax2 = ax.twinx()
            ax2.plot(epochs, est.validation_scores_, label="validation accuracy", c="C1")
            ax2.set_ylabel("validation accuracy (early-stopping split)")
            ax2.legend(loc="center right")
        ax.legend(loc="upper right")
        ax.set_title("MLP head: training history")
        written.append(_save(fig, folder / "mlp_history.png"))
    return written
