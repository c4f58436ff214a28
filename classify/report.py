"""One self-contained HTML page of the whole experiment: ``python -m classify.report``.

It reads only what the stages wrote (``OUT/run.json``, ``comparison.csv``, ``predictions.csv``,
``split.csv``, ``figures/``, ``reports/``, ``audit/`` and the cache ``FEATURES/<input-id>/<key>/``) and writes
``OUT/report.html``: figures and thumbnails are embedded as base64 ``data:`` URIs, so the page
opens offline, and nothing on it points to the network. Thumbnails are made once and cached in
``OUT/report_cache/thumbs/<sha256>.jpg``. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import html
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from extract.atomic import atomic_write
from extract.cache import read_cache

from .data import DataError

SECTIONS = [
    ("run", "The run"),
    ("data", "The data"),
    ("embedding", "Embedding map"),
    ("backbones", "Backbones x heads"),  # only for `make compare BACKBONES=...` runs
    ("comparison", "Comparison"),
    ("fewshot", "Few-shot curves"),  # only for `make compare SHOTS=...` runs
    ("figures", "Figures"),
    ("gallery", "Misclassified images"),
    ("audit", "Audit"),
]
FIGURE_CAPTIONS = {
    "confusion_matrices.png": "Confusion matrices of every head on the evaluated images (rows: true class).",
    "roc.png": "ROC curves of every head (two classes).",
    "mlp_history.png": "MLP head: training loss and validation accuracy per epoch.",
    "fewshot.png": "Few-shot curves: balanced accuracy at k training images per class (band: lowest to highest draw).",
}
MAX_GALLERY = 60
MAX_TSNE = 2000
MAX_PCA_POINTS = 20_000  # dots drawn on the PCA panel (the PCA itself is fitted on every vector)
MAX_TABLE_ROWS = 25
MAX_REJECTED_ROWS = 100
THUMB_SIZE = 96
# summary.json numbers that are settings, not findings: shown in the table, not as tiles
SETTINGS_KEYS = {"seed", "test_size", "folds", "jobs", "seconds", "top"}


# ----------------------------------------------------------------------------------------- helpers

def esc(value) -> str:
    """HTML-escapes ``value``; a ``://`` in data (a path, a label) is written so that the page
    never contains a literal URL, yet reads the same."""
    return html.escape(str(value), quote=True).replace("://", ":&#47;&#47;")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    """Reads a CSV as strings (labels like ``0`` stay labels); None when missing or unreadable."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if "." in value or "e" in value.lower():
            return _fmt(number)
    return str(value)


# Columns of names, not numbers: shown as written (a class "1.10" is not the number 1.1).
TEXT_COLUMNS = {"class", "label", "labels", "suggested_label", "path", "paths", "head", "split",
                "role", "sha256", "label_a", "label_b", "path_a", "path_b", "split_a", "split_b"}


def table(df: pd.DataFrame, cell=None, cls: str = "") -> str:
    """An HTML table of ``df``; ``cell(column, value)`` may return HTML for a cell.

    Numbers are rounded for reading, except in :data:`TEXT_COLUMNS`, which hold names.
    """
    head = "".join(f"<th>{esc(c).replace('_', '_<wbr>')}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, row):
            inner = cell(col, value) if cell else None
            shown = value if col in TEXT_COLUMNS else _fmt(value)
            cells.append(f"<td>{inner if inner is not None else esc(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="tw"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def img_tag(uri: str, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


# -------------------------------------------------------------------------------------- thumbnails

class Thumbs:
    """Thumbnails of input images as data URIs, cached on disk by content hash."""

    def __init__(self, in_dir: Path, cache_dir: Path, sha_by_path: dict, size: int = THUMB_SIZE):
        self.in_dir, self.cache_dir, self.sha_by_path, self.size = Path(in_dir), Path(cache_dir), sha_by_path, size
        self.made = self.reused = self.failed = 0
        self._memo: dict[str, str] = {}
        self._placeholder = None

    def placeholder(self) -> str:
        if self._placeholder is None:
            from PIL import Image, ImageDraw

            img = Image.new("RGB", (self.size, self.size), (225, 225, 225))
            draw = ImageDraw.Draw(img)
            draw.line((0, 0, self.size, self.size), fill=(170, 170, 170), width=2)
            draw.line((0, self.size, self.size, 0), fill=(170, 170, 170), width=2)
            draw.text((6, self.size // 2 - 6), "unreadable", fill=(90, 90, 90))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            self._placeholder = data_uri(buf.getvalue(), "image/png")
        return self._placeholder

    def __call__(self, rel_path: str) -> str:
        if rel_path in self._memo:
            return self._memo[rel_path]
        uri = self._make(rel_path)
        self._memo[rel_path] = uri
        return uri

    def _make(self, rel_path: str) -> str:
        from PIL import Image

        from extract.files import fs_path
        from extract.load import load_image

        path = Path(fs_path(self.in_dir, rel_path))
        sha = self.sha_by_path.get(rel_path)
        if not sha:
            try:
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                self.failed += 1
                return self.placeholder()
        cached = self.cache_dir / f"{sha}-{self.size}.jpg"
        if cached.is_file():
            self.reused += 1
            return data_uri(cached.read_bytes(), "image/jpeg")
        try:
            arr = load_image(str(path), self.size)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=82)
        except Exception:  # an unreadable or vanished image gets a placeholder, never a crash
            self.failed += 1
            return self.placeholder()
        data = buf.getvalue()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, lambda fh: fh.write(data))
        except OSError:
            pass
        self.made += 1
        return data_uri(data, "image/jpeg")


# ---------------------------------------------------------------------------------------- sections

def section_run(run: dict, meta: dict, features_folder: Path | None) -> str:
    ext = run.get("extraction") or {}
    weights = meta.get("weights", ext.get("weights"))
    fallback = run.get("weights_fallback") or meta.get("weights_fallback")
    parts = []
    if weights == "none" or fallback:
        why = f" ({esc(fallback)})" if fallback and not isinstance(fallback, bool) else ""
        parts.append(
            '<div class="banner" role="alert"><strong>Random weights.</strong> These embeddings come '
            f"from a randomly initialised backbone, not ImageNet weights{why}. Scores show what random "
            "convolutional features can do, not what pretrained features can.</div>")
    parts.append(label_conflicts_note(run.get("label_conflicts")))
    settings = [
        ("features key", f"<code>{esc(run.get('features_key', ''))}</code>"),
        ("features folder", f"<code>{esc(features_folder or run.get('features_folder', ''))}</code>"),
    ]
    for k in ("backbone", "weights", "image_size", "pooling", "precision", "dim"):
        value = meta.get(k, ext.get(k))
        if value is not None:
            settings.append((k, esc(value)))
    if fallback:
        settings.append(("weights fallback", esc(fallback)))
    known = ["heads", "seed", "test_size", "folds", "jobs", "split_rule", "n_images", "n_train",
             "n_eval", "seconds", "created"]
    skip = {"features_key", "features_folder", "extraction", "weights_fallback", "versions", "figures",
            "class_names"}
    # the known settings first, then whatever else run.json records (a later stage 2 may add some)
    for k in known + sorted(set(run) - set(known) - skip):
        value = run.get(k)
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            value = ", ".join(map(str, value))
        if k in run and not isinstance(value, (dict, list)):
            settings.append((k.replace("_", " "), esc(value)))
    extraction = [(k, esc(meta[k])) for k in ("computed", "reused", "rejected", "skipped", "seconds",
                                              "images_per_second", "device") if k in meta]
    versions = dict(meta.get("versions") or {})
    versions.update(run.get("versions") or {})
    parts.append('<div class="cols">')
    parts.append("<div><h3>Settings</h3>" + kv_table(settings) + "</div>")
    right = ""
    if extraction:
        right += "<h3>Last extraction</h3>" + kv_table(extraction)
    if versions:
        right += "<h3>Versions</h3>" + kv_table((k, esc(v)) for k, v in versions.items())
    parts.append(f"<div>{right}</div></div>")
    return "".join(parts)


def label_conflicts_note(conflicts) -> str:
    """A warning with a table of the files filed under more than one label (run.json), or ""."""
    if not isinstance(conflicts, list) or not conflicts:
        return ""
    rows = [{"sha256": str(c.get("sha256", ""))[:12], "labels": ", ".join(map(str, c.get("labels", []))),
             "paths": ", ".join(map(str, c.get("paths", [])))} for c in conflicts if isinstance(c, dict)]
    return (f'<p class="warn">Label conflicts: {len(rows)} file(s) are filed under more than one '
            "label (the same content, by SHA-256). Their copies are kept together on one side of "
            "every split, but at most one label is right: fix or remove the others.</p>"
            + table(pd.DataFrame(rows, columns=["sha256", "labels", "paths"])))


def section_data(manifest: pd.DataFrame | None, split: pd.DataFrame | None, rejected: pd.DataFrame | None,
                 meta: dict) -> str:
    parts = []
    if split is not None and {"label", "role"} <= set(split.columns):
        counts = pd.crosstab(split["label"], split["role"], margins=True, margins_name="total")
        order = [c for c in ("train", "eval", "unused", "total") if c in counts.columns]
        counts = counts[order + [c for c in counts.columns if c not in order]]
        counts = counts.reset_index().rename(columns={"label": "class"})
        parts.append("<h3>Images per class and role</h3><p>train: fitted and cross-validated on; "
                     "eval: the evaluated images behind every score and the gallery.</p>")
        parts.append(table(counts.astype(str), cls="num"))
    if manifest is not None and "split" in manifest and (manifest["split"] != "").any():
        counts = pd.crosstab(manifest["label"], manifest["split"].replace("", "(none)"), margins=True,
                             margins_name="total").reset_index().rename(columns={"label": "class"})
        parts.append("<h3>Images per class and split folder (the cache)</h3>")
        parts.append(table(counts.astype(str), cls="num"))
    elif manifest is not None:
        counts = manifest["label"].value_counts().sort_index().rename_axis("class").reset_index(name="images")
        parts.append("<h3>Images per class (the cache)</h3>")
        parts.append(table(counts.astype(str), cls="num"))
    if not parts:
        parts.append("<p>Neither split.csv nor the cache manifest could be read.</p>")
    parts.append("<h3>Rejected files</h3>")
    if rejected is None:
        parts.append("<p>No <code>rejected.csv</code> in the cache.</p>")
    elif rejected.empty:
        parts.append(f"<p>None: every image file was embedded"
                     f"{' (' + esc(meta['skipped']) + ' non-image files skipped)' if meta.get('skipped') else ''}.</p>")
    else:
        shown = rejected.head(MAX_REJECTED_ROWS)
        note = (f" (the first {MAX_REJECTED_ROWS} shown)" if len(rejected) > MAX_REJECTED_ROWS else "")
        parts.append(f'<p class="warn">{len(rejected)} file(s) could not be embedded{note}:</p>')
        parts.append(table(shown))
    return "".join(parts)


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


def section_embedding(X, manifest: pd.DataFrame | None, wrong_paths: set, seed: int,
                      max_tsne: int) -> str:
    if X is None or manifest is None:
        return "<p>The cached embeddings could not be read, so there is no map.</p>"
    n = len(manifest)
    if n < 3:
        return f"<p>Only {n} cached image(s): too few for a map.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    labels = manifest["label"].to_numpy()
    classes = sorted(set(labels))
    wrong = manifest["path"].isin(wrong_paths).to_numpy()
    pca = PCA(n_components=2, random_state=seed).fit(X)
    ratio = pca.explained_variance_ratio_
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    drawn = np.arange(n)
    if n > MAX_PCA_POINTS:  # a million dots (and tens of thousands of rings) would be one blot
        drawn = np.sort(np.random.default_rng(seed).choice(n, MAX_PCA_POINTS, replace=False))
    _scatter(axes[0], pca.transform(X[drawn]), labels[drawn], classes, wrong[drawn],
             f"PCA of all {n:,} cached vectors ({ratio[0]:.0%} + {ratio[1]:.0%} of the variance)"
             + (f", {len(drawn):,} drawn" if len(drawn) < n else ""))
    note = ""
    if n >= 5:
        idx = np.arange(n)
        if n > max_tsne:
            idx = np.sort(np.random.default_rng(seed).choice(n, max_tsne, replace=False))
            note = (f" t-SNE ran on a sample of {max_tsne:,} of the {n:,} vectors, drawn with "
                    f"SEED={seed}; " + ("the PCA panel shows all of them." if len(drawn) == n else
                                        f"the PCA panel, fitted on all of them, draws a sample of "
                                        f"{len(drawn):,}."))
        Xs = X[idx]
        if Xs.shape[1] > 50 and len(idx) > 50:
            Xs = PCA(n_components=50, random_state=seed).fit_transform(Xs)
        perplexity = float(min(30.0, (len(idx) - 1) / 3))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                   learning_rate="auto").fit_transform(Xs)
        _scatter(axes[1], emb, labels[idx], classes, wrong[idx],
                 f"t-SNE of {len(idx):,} vectors (perplexity {perplexity:g})")
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "too few images for t-SNE", ha="center")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8, frameon=False,
               markerscale=1.6)
    fig.tight_layout(rect=(0, 0.08 if len(names) <= 8 else 0.14, 1, 1))
    uri = data_uri(_png(fig), "image/png")
    return (f'<figure>{img_tag(uri, "PCA and t-SNE maps of the cached embeddings", "wide")}'
            f"<figcaption>Each dot is one cached image, coloured by its class; black rings mark "
            f"evaluated images that at least one head got wrong ({int(wrong.sum()):,}"
            + (f", {int(wrong[drawn].sum()):,} of them among the dots drawn" if len(drawn) < n else "")
            + f").{esc(note)}"
            "</figcaption></figure>")


def section_comparison(out: Path, comparison: pd.DataFrame | None, heads: list[str],
                       run: dict | None = None) -> str:
    if comparison is None:
        return "<p><code>comparison.csv</code> is missing: run <code>make compare</code>.</p>"
    best = None
    if "cv_mean" in comparison and len(comparison):
        best = comparison.iloc[pd.to_numeric(comparison["cv_mean"], errors="coerce").fillna(-1).argmax()]["head"]

    def cell(col, value):
        if col == "head":
            mark = ' <span class="best">best CV</span>' if value == best else ""
            return f"<strong>{esc(value)}</strong>{mark}"
        return None

    parts = [table(comparison, cell, cls="num"),
             "<p class=\"note\">accuracy, balanced accuracy and macro F1 on the evaluated images; "
             "cv_mean and cv_std: cross-validated balanced accuracy on the training part (it picks the "
             "best head); seconds are timings, "
             "not results.</p>"]
    if "verdict" in comparison:
        tied = comparison.loc[comparison["verdict"] == "tied", "head"].astype(str).tolist()
        parts.append(
            "<p><strong>Verdict:</strong> "
            + (f"{esc(', '.join(tied))} {'is' if len(tied) == 1 else 'are'} <em>tied</em> with "
               f"{esc(best)}: the difference is within what other folds could give. "
               if tied else f"{esc(best)} is ahead of every other head beyond the folds' noise. ")
            + "Intervals are 95% (Wilson over the evaluated images, corrected resampled t over the "
              "folds); <code>p_vs_best</code> is the corrected paired t on the same folds, "
              "<code>p_mcnemar</code> McNemar's exact test on the evaluated images; a head is "
              "<em>worse</em> when <code>p_vs_best</code> stays below 0.05 after Holm's "
              "adjustment. The figure <code>intervals.png</code> below draws them.</p>")
    parts.append(tuning_note(run or {}))
    if run and run.get("more_data"):
        parts.append(f"<p><strong>More images?</strong> {esc(run['more_data'])} "
                     "(<code>learning_curve.png</code> below)</p>")
    for head in heads:
        txt = out / "reports" / f"{head}.txt"
        if txt.is_file():
            parts.append(f"<details><summary>classification report: {esc(head)}</summary>"
                         f"<pre>{esc(txt.read_text(encoding='utf-8', errors='replace'))}</pre></details>")
    return "".join(parts)


def tuning_note(run: dict) -> str:
    """How each head's settings (the ``params`` column) were chosen, and what each split was for."""
    tuning, use = run.get("tuning") or {}, run.get("split_use") or {}
    parts = []
    if tuning:
        grids = tuning.get("grids") or {}
        searched = "; ".join(f"{esc(h)}: " + ", ".join(f"{esc(k)} in {esc(v)}" for k, v in g.items())
                             for h, g in grids.items())
        parts.append(f"<p><strong>Settings:</strong> tuning {esc(tuning.get('rule', ''))}"
                     + (f". Grids: {searched}" if searched else "")
                     + ". The chosen settings are the <code>params</code> column"
                     + ("; <code>tuning.csv</code> lists every candidate or fold" if tuning.get("mode") != "off" else "")
                     + ".</p>")
    if use:
        parts.append("<p><strong>Splits:</strong> " + "; ".join(f"<code>{esc(k)}</code>: {esc(v)}"
                                                              for k, v in use.items()) + ".</p>")
    return "".join(parts)


def section_backbones(out: Path, run: dict) -> str | None:
    """The backbone x head matrix of a ``BACKBONES`` run (None when OUT holds one backbone's run)."""
    matrix = _read_csv(out / "backbones.csv")
    if not run.get("backbones") or matrix is None:
        return None
    best = run.get("best_backbone", "")
    parts = [f"<p>Every head on every backbone, on the same images, split and folds. The best "
             f"cross-validated cell is on <strong>{esc(best)}</strong>: the other sections of this "
             "page show its run; each backbone's full outputs are in <code>OUT/&lt;backbone&gt;/</code> "
             f"(<code>make report OUT={esc(out / best)}</code> writes the page of one).</p>"]
    if run.get("same_split") is False:
        parts.append('<p class="warn">The backbones\' splits differ (GROUPS=dups draws each '
                     "backbone's duplicate clusters from its own embeddings).</p>")
    verdict = (run.get("backbone_test") or {}).get("verdict")
    if verdict:
        parts.append(f"<p><strong>Across backbones:</strong> {esc(verdict)} (each backbone's best head "
                     "against the best cell: <code>backbone_verdict</code> below).</p>")
    heat = out / "backbones.png"
    if heat.is_file():
        image = img_tag(data_uri(heat.read_bytes(), "image/png"), "heat map of the backbone x head matrix", "fig")
        parts.append(f"<figure>{image}<figcaption>cv_mean (± cv_std) and held-out accuracy of every head on every "
                     "backbone <code>backbones.png</code></figcaption></figure>")
    parts.append(table(matrix, cls="num"))
    parts.append('<p class="note"><code>backbones.csv</code>: one row per backbone and head; '
                 "dim is the embedding dimension, features_key the cache it was read from.</p>")
    return "".join(parts)


def section_fewshot(out: Path, run: dict) -> str | None:
    """The few-shot curves (``SHOTS``): the figure, and each head's mean, lowest and highest score
    per k over the draws; None when the run has no ``fewshot.csv``."""
    from .fewshot import summary

    shots = _read_csv(out / "fewshot.csv")
    if shots is None or not {"head", "shots", "score"} <= set(shots.columns):
        return None
    for col in ("shots", "score"):
        shots[col] = pd.to_numeric(shots[col], errors="coerce")
    info = run.get("fewshot") or {}
    parts = [f"<p>Each head at its fixed settings, fitted on k training images per class "
             f"({esc(info.get('draws', '?'))} seeded draws per k, the same images for every head), scored by "
             "balanced accuracy on the evaluated images of the classes drawn. From "
             "<code>fewshot.csv</code>.</p>"]
    left = info.get("classes_left_out") or {}
    for k, names in left.items():
        parts.append(f'<p class="warn">{esc(k)} shots: left out (fewer than {esc(k)} training images): '
                     f"{esc(', '.join(names))}</p>")
    png = out / "figures" / "fewshot.png"
    if png.is_file():
        parts.append(f'<figure>{img_tag(data_uri(png.read_bytes(), "image/png"), FIGURE_CAPTIONS["fewshot.png"], "fig")}'
                     f"<figcaption>{esc(FIGURE_CAPTIONS['fewshot.png'])}</figcaption></figure>")
    parts.append(table(summary(shots), cls="num"))
    return "".join(parts)


def section_figures(out: Path) -> str:
    folder = out / "figures"
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    pngs.sort(key=lambda p: (list(FIGURE_CAPTIONS).index(p.name) if p.name in FIGURE_CAPTIONS else 99, p.name))
    if not pngs:
        return "<p>No figures in <code>figures/</code>: run <code>make compare</code>.</p>"
    parts = ['<div class="figs">']
    for p in pngs:
        caption = FIGURE_CAPTIONS.get(p.name, p.name)
        wide = " full" if p.name == "confusion_matrices.png" else ""
        parts.append(f'<figure class="{wide.strip()}">{img_tag(data_uri(p.read_bytes(), "image/png"), caption, "fig")}'
                     f"<figcaption>{esc(caption)} <code>figures/{esc(p.name)}</code></figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


def misclassified(pred: pd.DataFrame | None, heads: list[str]) -> pd.DataFrame:
    """Rows of predictions.csv that at least one head got wrong, most heads wrong first."""
    if pred is None or "label" not in pred:
        return pd.DataFrame()
    present = [h for h in heads if h in pred]
    if not present:
        return pd.DataFrame()
    wrong = np.zeros(len(pred), int)
    for h in present:
        wrong += (pred[h].astype(str) != pred["label"].astype(str)).to_numpy()
    rows = pred.assign(_wrong=wrong)
    rows = rows[rows["_wrong"] > 0]
    return rows.sort_values(["_wrong", "path"], ascending=[False, True], kind="stable")


def section_gallery(errors: pd.DataFrame, pred: pd.DataFrame | None, heads: list[str], thumbs: Thumbs,
                    max_gallery: int) -> str:
    if pred is None:
        return "<p><code>predictions.csv</code> is missing: run <code>make compare</code>.</p>"
    if errors.empty:
        return f"<p>No evaluated image was misclassified by any head ({len(pred)} evaluated).</p>"
    present = [h for h in heads if h in errors]
    shown = errors.head(max_gallery)
    cap = (f" Showing the first {len(shown)} of {len(errors)} (the cap is {max_gallery}), those the "
           "most heads got wrong first." if len(errors) > len(shown) else "")
    parts = [f"<p>{len(errors)} of {len(pred)} evaluated images were misclassified by at least one "
             f"head.{cap} Red: a wrong prediction. Scores: the calibrated probability of the predicted "
             "class, for every head.</p><div class=\"gallery\">"]
    for row in shown.to_dict("records"):
        lines = []
        for h in present:
            ok = str(row[h]) == str(row["label"])
            score = row.get(f"{h}_score", "")
            lines.append(f'<li class="{"ok" if ok else "bad"}">{esc(h)}: {esc(row[h])}'
                         f'{f" <small>({esc(_fmt(score))})</small>" if score != "" else ""}</li>')
        parts.append(
            f'<div class="card">{img_tag(thumbs(row["path"]), row["path"], "thumb")}'
            f'<div class="path" title="{esc(row["path"])}">{esc(row["path"])}</div>'
            f'<div>true: <strong>{esc(row["label"])}</strong></div><ul>{"".join(lines)}</ul></div>')
    parts.append("</div>")
    return "".join(parts)


def _render_json(value, depth: int = 0) -> str:
    """Any JSON value as HTML: flat dicts as key/value tables, lists of records as tables."""
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values())
                         for v in value.values()):
            df = pd.DataFrame.from_dict(value, orient="index").reset_index().rename(columns={"index": ""})
            return table(df, cls="num")
        return kv_table((k, _render_json(v, depth + 1)) for k, v in value.items())
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            df = pd.DataFrame(value[:MAX_TABLE_ROWS])
            more = f"<p class=\"note\">first {MAX_TABLE_ROWS} of {len(value)}</p>" if len(value) > MAX_TABLE_ROWS else ""
            return table(df.astype(str), cls="num") + more
        if all(not isinstance(v, (dict, list)) for v in value):
            return esc(", ".join(_fmt(v) for v in value))
        return f"<pre>{esc(json.dumps(value, indent=1)[:4000])}</pre>"
    if value is None:
        return "&ndash;"
    return esc(_fmt(value))


def _find_keys(obj, words, prefix=""):
    """(dotted key, value) for every scalar whose key contains one of ``words``."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if isinstance(v, (dict, list)):
                found += _find_keys(v, words, name + ".")
            elif any(w in str(k).lower() for w in words):
                found.append((name, v))
    return found


def _audit_table(df: pd.DataFrame | None, name: str, thumbs: Thumbs, known_paths: set, in_dir: Path) -> str:
    if df is None:
        return f"<p>No <code>{esc(name)}</code>.</p>"
    if df.empty:
        return f"<p><code>{esc(name)}</code>: none found.</p>"
    shown = df.head(MAX_TABLE_ROWS)
    path_cols = [c for c in df.columns if "path" in c.lower() or
                 shown[c].head(5).map(lambda v: v in known_paths).any()]

    def cell(col, value):
        if col in path_cols and isinstance(value, str) and value and (
                value in known_paths or (in_dir / value).is_file()):
            return f'{img_tag(thumbs(value), value, "thumb small")}<div class="path">{esc(value)}</div>'
        return None

    note = (f"<p class=\"note\">the first {MAX_TABLE_ROWS} of {len(df)} rows of <code>{esc(name)}</code></p>"
            if len(df) > MAX_TABLE_ROWS else f"<p class=\"note\">{len(df)} rows of <code>{esc(name)}</code></p>")
    return table(shown, cell, cls="audit") + note


def section_audit(out: Path, thumbs: Thumbs, known_paths: set, in_dir: Path) -> str:
    folder = out / "audit"
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        return ("<p>No audit yet: run <code>make audit</code> (near-duplicates across splits, label "
                "suspects, leakage-aware scores), then <code>make report</code> again.</p>")
    summary = _read_json(summary_path)
    parts = []
    if not isinstance(summary, dict):
        parts.append('<p class="warn"><code>audit/summary.json</code> could not be read as a JSON object.</p>')
        summary = {}
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    # Tiles: the threshold(s), then the counts (top-level numbers and those of count-like groups).
    tiles = [(k, v) for k, v in _find_keys(summary, ("threshold",)) if number(v)]
    tiles += [(k, v) for k, v in summary.items()
              if number(v) and k not in SETTINGS_KEYS and not any(k == t[0] for t in tiles)]
    rest = {k: v for k, v in summary.items() if not any(k == t[0] for t in tiles)}
    for group, value in summary.items():
        if isinstance(value, dict) and any(w in group.lower() for w in ("dup", "suspect", "count", "leak")):
            counts = {k: v for k, v in value.items()
                      if isinstance(v, int) and not isinstance(v, bool) and k not in SETTINGS_KEYS}
            tiles += [(f"{group}: {k}", v) for k, v in counts.items()]
            rest[group] = {k: v for k, v in value.items() if k not in counts}
            if not rest[group]:
                del rest[group]
    if tiles:
        parts.append('<div class="tiles">' + "".join(
            f'<div class="tile"><div class="v">{esc(_fmt(v))}</div><div class="k">{esc(k)}</div></div>'
            for k, v in tiles) + "</div>")
    for key in [k for k, v in rest.items() if "score" in k.lower() and isinstance(v, dict)]:
        parts.append(f"<h3>{esc(key.replace('_', ' ').capitalize())}: plain and leakage-aware</h3>"
                     + _render_json(rest.pop(key)))
    if rest:
        parts.append("<h3>Summary</h3>" + _render_json(rest))
    parts.append("<h3>Near-duplicate pairs</h3>")
    parts.append(_audit_table(_read_csv(folder / "duplicates.csv"), "duplicates.csv", thumbs, known_paths, in_dir))
    parts.append("<h3>Label suspects</h3>")
    parts.append(_audit_table(_read_csv(folder / "label_suspects.csv"), "label_suspects.csv", thumbs,
                              known_paths, in_dir))
    sheets = sorted(folder.glob("*.png"))
    if sheets:
        parts.append('<h3>Contact sheets</h3><div class="figs">')
        for p in sheets:
            parts.append(f'<figure>{img_tag(data_uri(p.read_bytes(), "image/png"), p.name, "fig sheet")}'
                         f"<figcaption><code>audit/{esc(p.name)}</code></figcaption></figure>")
        parts.append("</div>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------- page

CSS = """
:root { --ink:#1d2430; --muted:#5b6575; --line:#d9dee6; --accent:#2457a6; --bad:#b3261e; --ok:#1e7b34; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink);
       background:#f5f7fa; }
header { background:#1d2a3f; color:#fff; padding:18px 28px 12px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:0; color:#c8d2e2; font-size:13px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:8px 28px; }
nav a { color:var(--accent); text-decoration:none; margin-right:16px; font-size:14px; white-space:nowrap; }
main { max-width:1180px; margin:0 auto; padding:8px 24px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px 20px 18px; margin:18px 0; }
h2 { font-size:19px; border-bottom:2px solid var(--accent); padding-bottom:4px; }
h3 { font-size:15px; margin:16px 0 6px; color:var(--muted); }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13px; }
th, td { border:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
thead th { background:#eef2f7; }
table.num td { font-variant-numeric: tabular-nums; }
table.kv th { background:#f6f8fb; font-weight:600; white-space:nowrap; }
table.kv table.kv { margin:0; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size:12.5px; }
pre { background:#f6f8fb; padding:8px; overflow:auto; }
.banner { background:#fff3cd; border:2px solid #e0a800; color:#5c4400; padding:12px 16px; border-radius:6px;
          margin:12px 0; font-size:15px; }
.warn { color:var(--bad); }
.note { color:var(--muted); font-size:13px; }
.best { white-space:nowrap; background:var(--ok); color:#fff; border-radius:3px; padding:0 5px; font-size:11px; }
.cols { display:flex; flex-wrap:wrap; gap:24px; }
.cols > div { flex:1 1 420px; min-width:0; }
figure { margin:12px 0; }
figcaption { color:var(--muted); font-size:13px; }
img.fig, img.wide { max-width:100%; height:auto; border:1px solid var(--line); }
.figs { display:flex; flex-wrap:wrap; gap:8px 24px; align-items:flex-start; }
.figs figure { flex:1 1 420px; min-width:0; }
.figs figure.full { flex-basis:100%; }
.figs figure:not(.full) img.fig { max-height:420px; width:auto; }
.figs img.fig.sheet { max-height:900px !important; }
.tw { max-width:100%; overflow-x:auto; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:6px; font-size:12.5px; break-inside:avoid; }
.card ul { list-style:none; margin:4px 0 0; padding:0; }
.card li.bad { color:var(--bad); font-weight:600; }
.card li.ok { color:var(--ok); }
img.thumb { width:96px; height:96px; image-rendering:auto; display:block; border:1px solid var(--line); }
img.thumb.small { width:56px; height:56px; }
.path { color:var(--muted); font-size:11.5px; overflow-wrap:anywhere; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; margin:10px 0; }
.tile { border:1px solid var(--line); border-radius:6px; padding:6px 12px; min-width:110px; background:#f9fbfd; }
.tile .v { font-size:20px; font-weight:700; }
.tile .k { color:var(--muted); font-size:12px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:12px; }
@media print {
  body { background:#fff; font-size:11pt; }
  nav { display:none; }
  header { background:none; color:#000; padding:0; }
  header p { color:#333; }
  main { max-width:none; padding:0; }
  section { border:none; padding:0; margin:0 0 14pt; break-before:auto; }
  h2 { break-after:avoid; }
  figure, .card, table, .banner { break-inside:avoid; }
  details::details-content { content-visibility:visible; display:block; }
  details > summary { list-style:none; font-weight:600; }
  .gallery { grid-template-columns:repeat(5, 1fr); }
  .tw { overflow:visible; }
  a { color:#000; }
}
"""

# Opens the classification reports for printing; after load, reports images that failed to decode
# on the console (the browser test looks for console errors) and marks the page as rendered.
SCRIPT = """
window.addEventListener('beforeprint', function () {
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
});
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) {
      broken++;
      console.error('image failed to render: ' + imgs[i].alt);
    }
  }
  var ids = [];
  document.querySelectorAll('main > section[id]').forEach(function (s) { ids.push(s.id); });
  document.documentElement.setAttribute('data-rendered', 'images=' + imgs.length + ' broken=' + broken +
                                        ' sections=' + ids.join(',') +
                                        ' height=' + document.documentElement.scrollHeight);
});
"""


def build_report(in_dir, features_dir, out_dir, max_gallery: int = MAX_GALLERY, max_tsne: int = MAX_TSNE,
                 seed: int | None = None, log=print) -> Path:
    """Writes ``out_dir/report.html`` from what the stages wrote; returns its path.

    Args:
        in_dir: the images (IN), for thumbnails.
        features_dir: the cache root (FEATURES); the key comes from ``OUT/run.json``.
        out_dir: the stage 2 outputs (OUT).
        max_gallery: most misclassified images shown.
        max_tsne: most vectors given to t-SNE (a seeded sample beyond that).
        seed: the sample's seed (default: the run's SEED).

    Raises:
        DataError: ``OUT/run.json`` is missing (``make compare`` has not run) or unreadable.
    """
    in_dir, features_dir, out = Path(in_dir), Path(features_dir), Path(out_dir)
    if max_gallery < 0 or max_tsne < 0:
        raise ValueError(f"caps must be >= 0; received max_gallery={max_gallery}, max_tsne={max_tsne}")
    run = _read_json(out / "run.json")
    if not isinstance(run, dict):
        raise DataError(f"{out / 'run.json'} is missing or unreadable: run `make compare OUT={out}` first")
    seed = int(run.get("seed", 42)) if seed is None else seed

    X, manifest, meta, folder, cache_note = None, None, {}, None, ""
    candidates = []
    if run.get("features_folder"):  # FEATURES/<input-id>/<key>, as compare found it
        candidates.append(Path(run["features_folder"]))
    if run.get("features_key"):  # the layout before input folders
        candidates.append(features_dir / run["features_key"])
    for cand in candidates:
        if (cand / "manifest.csv").is_file():
            try:
                X, rows, meta = read_cache(cand, mmap=True)
            except Exception as err:  # a damaged cache still gets a page that says so
                cache_note = f"the cache {cand} could not be read: {err}"
                continue
            manifest = pd.DataFrame(rows).fillna("") if rows else pd.DataFrame(columns=["path", "label", "split", "sha256"])
            folder = cand
            break
    else:
        cache_note = cache_note or ("the cache " + " or ".join(map(str, candidates)) + " was not found")
    rejected = _read_csv(folder / "rejected.csv") if folder else None

    comparison = _read_csv(out / "comparison.csv")
    pred = _read_csv(out / "predictions.csv")
    split = _read_csv(out / "split.csv")
    heads = list(run.get("heads") or [])
    if not heads and comparison is not None and "head" in comparison:
        heads = comparison["head"].tolist()
    errors = misclassified(pred, heads)
    sha_by_path = dict(zip(manifest["path"], manifest["sha256"])) if manifest is not None and "sha256" in manifest else {}
    thumbs = Thumbs(in_dir, out / "report_cache" / "thumbs", sha_by_path)
    known = set(sha_by_path) | (set(pred["path"]) if pred is not None and "path" in pred else set())

    bodies = {
        "run": section_run(run, meta, folder),
        "data": section_data(manifest, split, rejected, meta),
        "embedding": section_embedding(X, manifest, set(errors["path"]) if len(errors) else set(), seed, max_tsne),
        "backbones": section_backbones(out, run),
        "comparison": section_comparison(out, comparison, heads, run),
        "fewshot": section_fewshot(out, run),
        "figures": section_figures(out),
        "gallery": section_gallery(errors, pred, heads, thumbs, max_gallery),
        "audit": section_audit(out, thumbs, known, in_dir),
    }
    if cache_note:
        bodies["run"] = f'<p class="warn">{esc(cache_note)}</p>' + bodies["run"]
    title = f"embedcmp report: {run.get('features_key', '')}"
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    shown = [(sid, name) for sid, name in SECTIONS if bodies[sid] is not None]
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in shown)
    sections = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{bodies[sid]}</section>' for sid, name in shown)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>heads {esc(', '.join(heads))} &middot; "
        f"{esc(run.get('n_images', '?'))} images &middot; OUT <code>{esc(out)}</code> &middot; "
        f"written {esc(created)}</p></header><nav>{nav}</nav><main>{sections}</main>"
        f"<footer>made by <code>python -m classify.report</code> from OUT/run.json and the cache; "
        f"self-contained, works offline.</footer><script>{SCRIPT}</script></body></html>\n")
    path = out / "report.html"
    atomic_write(path, lambda fh: fh.write(page.encode("utf-8")))
    log(f"thumbnails: {thumbs.made} made, {thumbs.reused} reused from {out / 'report_cache'}, "
        f"{thumbs.failed} unreadable")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m classify.report",
                                description="Write OUT/report.html, one self-contained page of the experiment.")
    p.add_argument("--in", dest="in_dir", default="in", help="the images (IN), for thumbnails")
    p.add_argument("--features", default="features", help="cache root (FEATURES)")
    p.add_argument("--out", default="out", help="stage 2 outputs (OUT)")
    p.add_argument("--max-gallery", type=int, default=MAX_GALLERY, help="most misclassified images shown")
    p.add_argument("--max-tsne", type=int, default=MAX_TSNE, help="most vectors given to t-SNE")
    args = p.parse_args(argv)
    try:
        path = build_report(args.in_dir, args.features, args.out, args.max_gallery, args.max_tsne)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
