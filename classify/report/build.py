"""Reads what the stages wrote and puts the page together: ``build_report``."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd

from extract.atomic import atomic_write
from extract.cache import read_cache

from ..data import DataError
from ..remembered import RunInputs, remember
from .audit_section import section_audit
from .card import section_answer
from .comparison import section_backbones, section_comparison
from .dataset import section_data
from .embedding import MAX_TSNE, section_embedding
from .fewshot import section_fewshot
from .gallery import MAX_GALLERY, misclassified, section_gallery
from .markup import esc, read_csv
from .page import page
from .plots import section_figures
from .settings import section_settings
from .thumbs import Thumbs


@dataclasses.dataclass
class Cache:
    """The run's cache as the report found it (every field None or empty when it could not)."""

    X: object = None
    manifest: pd.DataFrame | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    folder: Path | None = None
    note: str = ""


def load_cache(inputs: RunInputs) -> Cache:
    """The cache named by the run (under FEATURES as given or recorded), else the layout before
    input folders (``FEATURES/<key>``); a cache that is missing or damaged gives a note."""
    run, note = inputs.run, ""
    candidates = [c for c in (inputs.cache_folder,) if c is not None]
    if run.get("features_key"):
        candidates.append(Path(inputs["features"]) / run["features_key"])
    for cand in candidates:
        if not (cand / "manifest.csv").is_file():
            continue
        try:
            X, rows, meta = read_cache(cand, mmap=True)
        except Exception as err:  # a damaged cache still gets a page that says so
            note = f"the cache {cand} could not be read: {err}"
            continue
        manifest = (pd.DataFrame(rows).fillna("") if rows else
                    pd.DataFrame(columns=["path", "label", "split", "sha256"]))
        return Cache(X, manifest, meta, cand)
    return Cache(note=note or ("the cache " + " or ".join(map(str, candidates)) + " was not found"))


GENERIC_FOLDER_NAMES = frozenset({"in", "input", "inputs", "images", "imgs", "data", "dataset", "photos", "pictures"})


def dataset_name(inputs: RunInputs, meta: dict) -> str:
    """The input's name: the DATASET it was given, or its folder's name (never the cache key);
    a generic folder name (``in``, the default IN, ``images``, ``data``...) comes with its
    parent's, e.g. ``demo/in``."""
    dataset = inputs.dataset_arg
    if dataset or (meta.get("backbone") or (inputs.run.get("extraction") or {}).get("backbone")) == "imported":
        return dataset or str(inputs["dataset"])
    folder = Path(str(inputs["in_dir"])).resolve()
    if folder.name.lower() in GENERIC_FOLDER_NAMES and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or str(inputs["in_dir"])


def _answer(comparison: pd.DataFrame | None):
    from ..answer import answer_of

    if comparison is None:
        return None
    numeric = comparison.copy()
    for col in numeric.columns:
        if col not in ("head", "verdict", "params"):
            numeric[col] = pd.to_numeric(numeric[col], errors="coerce")
    try:
        return answer_of(numeric)
    except ValueError:
        return None


def _train_counts(split: pd.DataFrame | None) -> dict:
    if split is None or not {"label", "role"} <= set(split.columns):
        return {}
    return split.loc[split["role"] == "train", "label"].value_counts().to_dict()


def _bodies(inputs: RunInputs, cache: Cache, thumbs: Thumbs, max_gallery: int, max_tsne: int, seed: int) -> dict:
    from ..remembered import class_counts

    out, run = inputs.out, inputs.run
    comparison, pred, split = (read_csv(out / n) for n in ("comparison.csv", "predictions.csv", "split.csv"))
    heads = list(run.get("heads") or [])
    if not heads and comparison is not None and "head" in comparison:
        heads = comparison["head"].tolist()
    answer = _answer(comparison)
    errors = misclassified(pred, heads)
    known = set(thumbs.sha_by_path) | (set(pred["path"]) if pred is not None and "path" in pred else set())
    weights = cache.meta.get("weights", (run.get("extraction") or {}).get("weights"))
    rejected = read_csv(cache.folder / "rejected.csv") if cache.folder else None
    bodies = {
        "answer": section_answer(answer, run, weights, class_counts(out), _train_counts(split)),
        "comparison": section_comparison(out, comparison, answer, heads, run),
        "backbones": section_backbones(out, run),
        "fewshot": section_fewshot(out, run),
        "figures": section_figures(out),
        "gallery": section_gallery(errors, pred, heads, thumbs, max_gallery),
        "data": section_data(cache.manifest, split, rejected, cache.meta, run.get("label_conflicts")),
        "embedding": section_embedding(cache.X, cache.manifest, set(errors["path"]) if len(errors) else set(),
                                       seed, max_tsne),
        "audit": section_audit(out, thumbs, known, Path(inputs["in_dir"])),
        "settings": section_settings(run, cache.meta, cache.folder),
    }
    bodies["gallery"] = thumbs.problem_html() + bodies["gallery"]  # known once every thumbnail was made
    if cache.note:
        bodies["settings"] = f'<p class="warn">{esc(cache.note)}</p>' + bodies["settings"]
        bodies["data"] = f'<p class="warn">{esc(cache.note)}</p>' + bodies["data"]
    return bodies


def build_report(in_dir=None, features_dir=None, out_dir="out", max_gallery: int = MAX_GALLERY,
                 max_tsne: int = MAX_TSNE, seed: int | None = None, log=print, given: dict | None = None) -> Path:
    """Writes ``out_dir/report.html`` from what the stages wrote; returns its path.

    Args:
        in_dir: the images (IN), for thumbnails; None: the run's (see :mod:`classify.remembered`).
        features_dir: the cache root (FEATURES); None: the run's.
        out_dir: the stage 2 outputs (OUT).
        max_gallery: most misclassified images shown.
        max_tsne: most vectors given to t-SNE (a seeded sample beyond that).
        seed: the sample's seed (default: the run's SEED).
        log: where messages go.
        given: other settings given on the command line ({field: value}: DATASET, BACKBONE,
            WEIGHTS, SIZE, POOLING, PRECISION, LAYER), checked against the run's.

    Raises:
        DataError: ``OUT/run.json`` is missing (``make compare`` has not run) or unreadable, or
            a given setting conflicts with the run's.
        ValueError: a negative cap.
    """
    out = Path(out_dir)
    if max_gallery < 0 or max_tsne < 0:
        raise ValueError(f"caps must be >= 0; received max_gallery={max_gallery}, max_tsne={max_tsne}")
    inputs = remember(out, {**(given or {}), "in_dir": in_dir, "features": features_dir})
    if not inputs.run:
        raise DataError(f"{out / 'run.json'} is missing or unreadable: run `make compare OUT={out}` first")
    for line in [inputs.said(), *inputs.notes]:
        if line:
            log(line)
    run = inputs.run
    seed = int(run.get("seed", 42)) if seed is None else seed
    cache = load_cache(inputs)
    sha_by_path = (dict(zip(cache.manifest["path"], cache.manifest["sha256"]))
                   if cache.manifest is not None and "sha256" in cache.manifest else {})
    thumbs = Thumbs(Path(inputs["in_dir"]), out / "report_cache" / "thumbs", sha_by_path)
    bodies = _bodies(inputs, cache, thumbs, max_gallery, max_tsne, seed)
    name = dataset_name(inputs, cache.meta)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (f"features <code>{esc(run.get('features_key', ''))}</code> &middot; heads "
                f"{esc(', '.join(run.get('heads') or []))} &middot; {esc(run.get('n_images', '?'))} images "
                f"&middot; OUT <code>{esc(out)}</code> &middot; written {esc(created)}")
    path = out / "report.html"
    html = page(f"embedcmp report: {name}", subtitle, bodies)
    atomic_write(path, lambda fh: fh.write(html.encode("utf-8")))
    log(f"thumbnails: {thumbs.made} made, {thumbs.reused} reused from {out / 'report_cache'}, "
        f"{thumbs.failed} unreadable")
    if thumbs.problem():
        log(f"warning: {thumbs.problem()}")
    return path
