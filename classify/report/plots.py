"""The figures section: every PNG of ``OUT/figures/``, each with the caption saved in it."""

from __future__ import annotations

from pathlib import Path

from ..figures import caption_of
from .markup import data_uri, esc, img_tag

# The order on the page, and captions for figures saved before captions were (older runs).
ORDER = ["intervals.png", "confusion_matrices.png", "roc.png", "reliability.png", "learning_curve.png",
         "mlp_history.png"]
FALLBACK_CAPTIONS = {
    "intervals.png": "Each head's accuracy on the evaluated images and its cross-validated balanced "
                     "accuracy, with 95% intervals.",
    "confusion_matrices.png": "Confusion matrix of each head on the evaluated images (rows: the true class).",
    "roc.png": "ROC curve of each head on the evaluated images (two classes).",
    "reliability.png": "How often the positive class is right against the probability each head gave it.",
    "learning_curve.png": "Each head's cross-validated balanced accuracy against the number of training images.",
    "mlp_history.png": "The MLP head's training history.",
    "fewshot.png": "Few-shot curves: balanced accuracy at k training images per class (band: lowest "
                   "to highest draw).",
}
OWN_SECTION = {"fewshot.png"}  # shown in its own section, not among the figures
WIDE = {"confusion_matrices.png"}


def caption(path: Path) -> str:
    """The figure's own caption, else a plain one from its kind (never its file name)."""
    return caption_of(path) or FALLBACK_CAPTIONS.get(path.name) or "A figure of this run."


def section_figures(out: Path) -> str:
    """Every figure of ``OUT/figures/`` in :data:`ORDER` (others after, by name), with captions."""
    folder = out / "figures"
    pngs = sorted(p for p in folder.glob("*.png") if p.name not in OWN_SECTION) if folder.is_dir() else []
    pngs.sort(key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    if not pngs:
        return "<p>No figures in <code>figures/</code>: run <code>make compare</code>.</p>"
    parts = ['<div class="figs">']
    for p in pngs:
        text = caption(p)
        wide = "full" if p.name in WIDE else ""
        parts.append(f'<figure class="{wide}" title="figures/{esc(p.name)}">'
                     f'{img_tag(data_uri(p.read_bytes(), "image/png"), text, "fig")}'
                     f"<figcaption>{esc(text)}</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)
