"""The embedding map: PCA of every cached vector and t-SNE of (a sample of) them, side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .markup import data_uri, esc, img_tag, png_bytes

MAX_TSNE = 2000
MAX_PCA_POINTS = 20_000  # dots drawn on the PCA panel (the PCA itself is fitted on every vector)


def _colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def _scatter(ax, xy, labels, classes, wrong, title):
    colours = _colours(len(classes))
    size = float(np.clip(4000 / max(len(xy), 1), 6, 36))
    for c, name in enumerate(classes):
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colours[c], label=str(name), alpha=0.75, linewidths=0)
    if wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=size * 4 + 20, facecolors="none", edgecolors="black",
                   linewidths=1.1, label="misclassified (eval)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _pca_panel(ax, X, labels, classes, wrong, seed: int) -> np.ndarray:
    """Draws the PCA panel (fitted on every vector, at most MAX_PCA_POINTS drawn); returns the
    rows drawn."""
    from sklearn.decomposition import PCA

    n = len(X)
    pca = PCA(n_components=2, random_state=seed).fit(X)
    ratio = pca.explained_variance_ratio_
    drawn = np.arange(n)
    if n > MAX_PCA_POINTS:  # a million dots (and tens of thousands of rings) would be one blot
        drawn = np.sort(np.random.default_rng(seed).choice(n, MAX_PCA_POINTS, replace=False))
    _scatter(ax, pca.transform(X[drawn]), labels[drawn], classes, wrong[drawn],
             f"PCA of all {n:,} cached vectors ({ratio[0]:.0%} + {ratio[1]:.0%} of the variance)"
             + (f", {len(drawn):,} drawn" if len(drawn) < n else ""))
    return drawn


def _tsne_panel(ax, X, labels, classes, wrong, seed: int, max_tsne: int, n_drawn: int) -> str:
    """Draws the t-SNE panel (a seeded sample above ``max_tsne``); returns a note on the sample."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(X)
    if n < 5:
        ax.axis("off")
        ax.text(0.5, 0.5, "too few images for t-SNE", ha="center")
        return ""
    idx, note = np.arange(n), ""
    if n > max_tsne:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_tsne, replace=False))
        note = (f" t-SNE ran on a sample of {max_tsne:,} of the {n:,} vectors, drawn with "
                f"SEED={seed}; " + ("the PCA panel shows all of them." if n_drawn == n else
                                    f"the PCA panel, fitted on all of them, draws a sample of {n_drawn:,}."))
    Xs = X[idx]
    if Xs.shape[1] > 50 and len(idx) > 50:
        Xs = PCA(n_components=50, random_state=seed).fit_transform(Xs)
    perplexity = float(min(30.0, (len(idx) - 1) / 3))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
               learning_rate="auto").fit_transform(Xs)
    _scatter(ax, emb, labels[idx], classes, wrong[idx], f"t-SNE of {len(idx):,} vectors (perplexity {perplexity:g})")
    return note


def section_embedding(X, manifest: pd.DataFrame | None, wrong_paths: set, seed: int,
                      max_tsne: int) -> str:
    """The two maps as one embedded PNG, with a caption that says what was sampled."""
    if X is None or manifest is None:
        return "<p>The cached embeddings could not be read, so there is no map.</p>"
    n = len(manifest)
    if n < 3:
        return f"<p>Only {n} cached image(s): too few for a map.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X = np.asarray(X, dtype=np.float32)
    labels = manifest["label"].to_numpy()
    classes = sorted(set(labels))
    wrong = manifest["path"].isin(wrong_paths).to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    drawn = _pca_panel(axes[0], X, labels, classes, wrong, seed)
    note = _tsne_panel(axes[1], X, labels, classes, wrong, seed, max_tsne, len(drawn))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8, frameon=False,
               markerscale=1.6)
    fig.tight_layout(rect=(0, 0.08 if len(names) <= 8 else 0.14, 1, 1))
    uri = data_uri(png_bytes(fig), "image/png")
    return (f'<figure>{img_tag(uri, "PCA and t-SNE maps of the cached embeddings", "wide")}'
            f"<figcaption>Each dot is one cached image, coloured by its class; black rings mark "
            f"evaluated images that at least one head got wrong ({int(wrong.sum()):,}"
            + (f", {int(wrong[drawn].sum()):,} of them among the dots drawn" if len(drawn) < n else "")
            + f").{esc(note)}"
            "</figcaption></figure>")
