"""Classify new images with a saved head: ``make predict IMAGES="a.jpg folder/" [HEAD=logreg]``.

The images are embedded with exactly the extraction settings the head was trained on (read from
the model's saved metadata, not from the current Make variables). An image whose content is
already in a cache of those settings (any ``FEATURES/<input-id>/<key>/``, looked up by SHA-256) is not
embedded again; only the others run through the backbone, and TensorFlow is imported only
when there are such images. Nothing is written to the cache: it holds the labelled images of
``IN`` only.

Writes ``OUT/new_predictions.csv``: ``path,head,label,score,error``, one row per input file
(``predictions.csv`` beside it holds compare's evaluated images, a different thing). The default
head is the answer's best (:mod:`classify.answer`). FEATURES defaults to the run's in OUT
(``run.json``); IN and extraction settings that are given must agree with the run and the head.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from extract.files import is_image_candidate, sha256_file, sniff, walk_files
from extract.load import DEFAULT_MAX_PIXELS
from extract.model import BACKBONES, Settings, WeightsUnavailable

from .data import DataError
from extract.notices import plural

COLUMNS = ["path", "head", "label", "score", "error"]
OUTPUT = "new_predictions.csv"  # new images; never predictions.csv, compare's evaluated ones


class SettingsMismatch(DataError):
    """A saved head needs extraction settings that cannot be reproduced here."""


# --------------------------------------------------------------------------- inputs

def expand_inputs(images, log=print) -> list[tuple[str, str]]:
    """Turns files and folders into ``(path as shown, error)`` pairs, one per file.

    A file named explicitly always gets a row (an error when it is missing). A folder is
    expanded recursively, sorted by path; hidden files and folders (leading ``.``) are skipped,
    and so are files that are neither named nor shaped like an image (``notes.txt``), as
    ``make features`` does; their number is logged.
    """
    rows: list[tuple[str, str]] = []
    skipped = 0
    for item in images:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            found = []
            for full in walk_files(p):  # hidden entries skipped, folder links visited once
                if is_image_candidate(full):
                    found.append(full.as_posix())
                else:
                    skipped += 1
            rows.extend((f, "") for f in sorted(found))
        elif p.exists():
            rows.append((item, ""))
        else:
            rows.append((item, "no such file or folder"))
    if skipped:
        log(f"skipped {skipped} files in the given folders that are not images (by name and content)")
    return rows


# --------------------------------------------------------------------------- models

def models_dir(out_dir) -> Path:
    return Path(out_dir) / "models"


def available_heads(out_dir) -> list[str]:
    """The heads with a saved model (and its sidecar) under ``OUT/models/``."""
    from .compare import MODEL_SUFFIX

    folder = models_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob(f"*{MODEL_SUFFIX}")
                  if not p.name.startswith(".") and p.with_suffix(".json").is_file())


def _no_models(out_dir) -> DataError:
    old = sorted(p.name for p in models_dir(out_dir).glob("*.joblib")) if models_dir(out_dir).is_dir() else []
    if old:
        return DataError(
            f"{models_dir(out_dir)} holds only old model files ({', '.join(old)}): they are pickles, "
            "which run code when loaded, so this version never opens them; run make compare "
            f"OUT={out_dir} to re-create them as .skops files")
    return DataError(
        f"no saved models in {models_dir(out_dir)} yet; make them first with: "
        f"make features && make compare OUT={out_dir} (with the IN, FEATURES and extraction "
        "settings you want), then run make predict again"
    )


def best_head(out_dir) -> str:
    """The saved head the run's answer names best (:func:`classify.answer.read_answer`: the
    highest cross-validated balanced accuracy, the rule of the verdicts), so ``make predict``
    uses the head ``make compare`` and the report call best.

    When the answer's best has no saved model, the next head of the answer's ranking that has one.
    Without ``comparison.csv`` the ``cv_mean`` recorded in each model's sidecar JSON decides
    (ties: the first by name).

    Raises:
        DataError: no saved models.
    """
    from .answer import read_answer

    heads = available_heads(out_dir)
    if not heads:
        raise _no_models(out_dir)
    try:
        ranked = [h.head for h in read_answer(out_dir).ranked]
    except (FileNotFoundError, ValueError, KeyError):
        ranked = []
    saved = [h for h in ranked if h in heads]
    if saved:
        return saved[0]
    import json

    best, best_cv = heads[0], -math.inf
    for name in heads:
        try:
            cv = float(json.loads((models_dir(out_dir) / f"{name}.json").read_text("utf-8"))["cv_mean"])
        except Exception:
            continue
        if cv > best_cv:
            best, best_cv = name, cv
    return best


def load_head(out_dir, head: str | None = None) -> dict:
    """Loads ``OUT/models/<head>.skops`` (default: :func:`best_head`) through ``load_model``.

    Raises:
        DataError: no models, an unknown head, or a file this tool did not write.
    """
    from .compare import MODEL_SUFFIX, load_model

    heads = available_heads(out_dir)
    if not heads:
        raise _no_models(out_dir)
    name = head or best_head(out_dir)
    if name not in heads:
        raise DataError(f"HEAD={name!r} has no saved model in {models_dir(out_dir)}; "
                        f"saved heads: {', '.join(heads)} (or leave HEAD empty for the best)")
    bundle = load_model(models_dir(out_dir) / f"{name}{MODEL_SUFFIX}")
    missing = {"model", "head", "class_names", "features_key", "settings"} - set(bundle)
    if missing:
        raise DataError(f"{models_dir(out_dir) / (name + MODEL_SUFFIX)} lacks {sorted(missing)}; "
                        "run make compare again to re-create it")
    return bundle


def _needs(bundle: dict) -> str:
    rec = bundle.get("settings") or {}
    return (f"BACKBONE={rec.get('backbone')} WEIGHTS={rec.get('weights')} SIZE={rec.get('image_size')} "
            f"POOLING={rec.get('pooling')} PRECISION={rec.get('precision')}"
            + (f" LAYER={rec['layer']}" if rec.get("layer") else ""))


def settings_of(bundle: dict) -> Settings:
    """Rebuilds the extraction settings a head was trained on, checking they still hold.

    The recorded features key must be reproduced exactly: same backbone (known to
    ``extract.model.BACKBONES``), pooling, size, precision, and the same weights (for a weights
    file: the file must exist and have the recorded hash).

    Raises:
        SettingsMismatch: naming the settings the head needs.
    """
    rec = bundle.get("settings") or {}
    key = bundle.get("features_key") or rec.get("key")
    weights = rec.get("weights")
    need = _needs(bundle)

    def refuse(reason: str) -> SettingsMismatch:
        return SettingsMismatch(
            f"head {bundle.get('head')!r} was trained on features {key} and needs the extraction "
            f"settings {need}, but {reason}. Restore them, or re-train the head on settings "
            "available here with make features && make compare (with your WEIGHTS=... SIZE=... "
            "POOLING=... PRECISION=...)"
        )

    if rec.get("backbone") not in BACKBONES:
        raise refuse(f"the backbone {rec.get('backbone')!r} is unknown here "
                     f"(known: {', '.join(sorted(BACKBONES))})")
    if not weights:
        raise refuse("the model records no weights")
    if weights not in ("imagenet", "none"):
        if not Path(weights).is_file():
            raise refuse(f"the weights file {weights} no longer exists")
    try:
        settings = Settings(str(rec["backbone"]), str(weights), int(rec["image_size"]),
                            str(rec["pooling"]), str(rec.get("precision") or "fp32"),
                            rec.get("layer") or None).check()
    except (KeyError, TypeError, ValueError, WeightsUnavailable) as err:
        raise refuse(f"they are not valid settings ({err})") from None
    if rec.get("weights_tag") and settings.weights_tag != rec["weights_tag"]:
        raise refuse(f"the weights file {weights} has changed (tag {settings.weights_tag}, "
                     f"recorded {rec['weights_tag']}: a different SHA-256)")
    if key and settings.key != key:
        raise refuse(f"these settings give the features key {settings.key} here")
    return settings


# --------------------------------------------------------------------------- prediction

def _cached_vectors(features_dir, key: str, log):
    """A :class:`~extract.run.VectorStore` of every cache of ``key`` under FEATURES (any input).

    Vectors are identified by content, so an image cached for any input is not embedded again.
    """
    from extract.cache import CacheError, caches_of_key, open_cache
    from extract.store import VectorStore

    store = VectorStore()
    folders = caches_of_key(features_dir, key)
    if not folders:
        log(f"note: no cache of {key} under {features_dir}; every image is embedded")
    for folder in folders:
        try:
            emb, manifest, _ = open_cache(folder, mmap=True)
        except (OSError, CacheError) as err:
            log(f"warning: ignoring the cache {folder} ({err})")
            continue
        store.add_cache(emb, manifest["sha256"].tolist())
    return store


def _not_an_image(path: str, max_pixels: int) -> str | None:
    """The loader's own refusal for a file that is empty or not an image by content, else None.

    Cheap (the first bytes only), so such files do not start TensorFlow.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    if head and sniff(head) is not None:
        return None
    from extract.load import ImageError, load_image

    try:
        load_image(path, 32, max_pixels)
    except ImageError as err:
        return str(err)
    return None


def notices_of(bundle: dict, out_dir) -> list[str]:
    """The lines printed before the predictions: the head's classes (with the run's image counts
    from ``split.csv`` when they are the head's), the split-like-name warning and the
    random-weights banner."""
    from extract.notices import class_counts_line, random_weights_banner, split_like_warning
    from .remembered import class_counts, read_run

    names = [str(c) for c in bundle.get("class_names") or []]
    counts = class_counts(out_dir)
    line = (class_counts_line(counts) if counts and set(counts) == set(names)
            else f"classes ({len(names)}): {', '.join(names)}")
    rec, run = bundle.get("settings") or {}, read_run(out_dir) or {}
    banner = random_weights_banner(rec.get("weights"), run.get("weights_fallback"))
    return [line] + [x for x in (split_like_warning(names), banner) if x]


def _hashes(entries, errors) -> list[str | None]:
    """The SHA-256 of each readable entry (None for the others; ``errors`` says why)."""
    shas: list[str | None] = [None] * len(entries)
    for i, (path, err) in enumerate(entries):
        if err:
            continue
        try:
            shas[i] = sha256_file(path)
        except OSError as exc:
            errors[i] = f"cannot read: {exc.strerror or exc}"
    return shas


def _embed_misses(misses: dict, entries, bundle: dict, settings: Settings, batch: int, max_pixels: int,
                  progress: bool, log):
    """Embeds the first file of each content not in the cache.

    Returns:
        ({entry index: vector}, {entry index: error}, the weights error in words or None).
    """
    from extract.embed import embed_files

    firsts = [rows[0] for rows in misses.values()]
    log(f"{plural(len(firsts), 'image')} not in the cache {bundle['features_key']}; embedding them "
        f"with {settings.key}")
    weights_error = None
    try:
        emb, errs = embed_files([entries[i][0] for i in firsts], settings, batch=batch,
                                max_pixels=max_pixels, progress=progress, log=log)
    except WeightsUnavailable as err:
        # Not raised: the cached images can still be classified. The CLI prints it.
        weights_error = (
            f"{plural(len(firsts), 'image')} not in the cache, and head {bundle['head']!r} needs the "
            f"backbone it was trained on to embed them ({_needs(bundle)}), which cannot be built "
            f"here: {err}")
        emb, errs = None, [f"not in the cache, and the backbone cannot be built: {err}"] * len(firsts)
    vectors, errors = {}, {}
    for j, rows in enumerate(misses.values()):
        for i in rows:
            if errs[j]:
                errors[i] = errs[j]
            else:
                vectors[i] = emb[j]
    return vectors, errors, weights_error


def _vectors(entries, errors, features_dir, bundle, settings, batch, max_pixels, progress, log):
    """Each classifiable entry's vector: from any cache of the head's key by content, else
    embedded. Returns ({entry index: vector}, how many came from the cache, the weights error)."""
    shas = _hashes(entries, errors)
    store = _cached_vectors(features_dir, bundle["features_key"], log)
    vectors: dict[int, np.ndarray] = {}
    misses: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        if sha is None:
            continue
        if sha in store:
            vectors[i] = np.asarray(store.get(sha), np.float32)
        elif (reason := _not_an_image(entries[i][0], max_pixels)) is not None:
            errors[i] = reason  # refused without starting the backbone
        else:
            misses.setdefault(sha, []).append(i)
    n_cached = len(vectors)
    weights_error = None
    if misses:
        embedded, failed, weights_error = _embed_misses(misses, entries, bundle, settings, batch,
                                                        max_pixels, progress, log)
        vectors.update(embedded)
        for i, err in failed.items():
            errors[i] = err
    return vectors, n_cached, weights_error


def _classify(bundle: dict, settings: Settings, vectors: dict, n: int) -> tuple[list, list]:
    """(label, score) per entry from the head; "" and NaN where there is no vector."""
    labels = [""] * n
    score: list[float] = [math.nan] * n
    ok = sorted(vectors)
    if not ok:
        return labels, score
    X = np.stack([vectors[i] for i in ok]).astype(np.float32)
    dim = (bundle.get("settings") or {}).get("dim")
    if dim and X.shape[1] != int(dim):
        raise SettingsMismatch(f"head {bundle['head']!r} expects {dim}-dimensional embeddings but "
                               f"{settings.key} gave {X.shape[1]}; run make compare again")
    from .heads import scores

    from .heads.knn import normalize_vectors

    got_labels, got_scores = scores(bundle["model"], normalize_vectors(X, bundle.get("normalize", "none")))
    for i, lab, sc in zip(ok, got_labels, got_scores):
        labels[i], score[i] = str(lab), round(float(sc), 6)
    return labels, score


def predict_images(images, features_dir="features", out_dir="out", head: str | None = None,
                   batch: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS, write: bool = True,
                   progress: bool = False, log=print) -> pd.DataFrame:
    """Classifies image files (or folders of them) with a head saved by ``make compare``.

    Args:
        images: files and/or folders (expanded recursively, sorted, hidden files skipped).
        features_dir: the cache root (FEATURES), searched by content hash before embedding.
        out_dir: where ``make compare`` wrote ``models/`` (OUT); ``new_predictions.csv`` goes there.
        head: the head's name; None or "" for the answer's best (:func:`best_head`).
        batch: images per model call for images not in the cache.
        max_pixels: larger images are refused (decompression-bomb guard).
        write: also write ``out_dir/new_predictions.csv``.
        progress: show a progress bar while embedding.
        log: where messages go; the classes and the random-weights banner are said first.

    Returns:
        A DataFrame ``path, head, label, score, error`` with one row per file: ``label`` and
        ``score`` (as in ``predictions.csv``: the predicted class's calibrated probability) are
        empty and ``error`` says why when the file could not be classified.
        ``df.attrs`` holds ``head``, ``features_key``, ``cached``, ``embedded`` and, when the
        backbone could not be built, ``weights_error``.

    Raises:
        DataError: no images given, no saved models (naming the command that makes them), an
            unknown head, or a model file this tool did not write.
        SettingsMismatch: the head's extraction settings cannot be reproduced here.
    """
    images = [str(i) for i in images if str(i).strip()]
    if not images:
        raise DataError('no images given; pass IMAGES="<file or folder> ..." '
                        '(e.g. make predict IMAGES="new/cat.jpg new/more/")')
    bundle = load_head(out_dir, head)
    settings = settings_of(bundle)
    for line in notices_of(bundle, out_dir):
        log(line)
    entries = expand_inputs(images, log=log)
    errors = [err for _, err in entries]
    vectors, n_cached, weights_error = _vectors(entries, errors, features_dir, bundle, settings, batch,
                                                max_pixels, progress, log)
    labels, score = _classify(bundle, settings, vectors, len(entries))
    df = pd.DataFrame({"path": [p for p, _ in entries], "head": bundle["head"], "label": labels,
                       "score": score, "error": errors}, columns=COLUMNS)
    df.attrs.update(head=bundle["head"], features_key=bundle["features_key"], cached=n_cached,
                    embedded=len(vectors) - n_cached, weights_error=weights_error)
    if write:
        from extract.atomic import write_csv

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / OUTPUT, COLUMNS,
                  ([r.path, r.head, r.label, "" if math.isnan(r.score) else r.score, r.error]
                   for r in df.itertuples(index=False)))
    return df


# --------------------------------------------------------------------------- export

def fold_logreg(pipe) -> tuple[np.ndarray, np.ndarray]:
    """Folds ``StandardScaler`` + ``LogisticRegression`` into ``softmax(x @ W.T + b)``.

    Returns:
        ``(W (k, D), b (k,))`` in float64, k the number of classes, such that
        ``softmax(x @ W.T + b)`` equals ``pipe.predict_proba(x)``. Two classes: sklearn's
        ``sigmoid(z)`` is ``softmax([0, z])[1]``, so the first row is zeros.
    """
    scaler, lr = pipe[0], pipe[-1]
    d = np.asarray(lr.coef_).shape[1]
    mean = np.asarray(scaler.mean_, np.float64) if scaler.with_mean else np.zeros(d)
    scale = np.asarray(scaler.scale_, np.float64) if scaler.with_std else np.ones(d)
    coef = np.asarray(lr.coef_, np.float64) / scale
    icpt = np.asarray(lr.intercept_, np.float64) - coef @ mean
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        icpt = np.concatenate([[0.0], icpt])
    return coef, icpt


def _export_difference(path: Path, backbone, pipe, settings: Settings, check: int) -> float:
    """The largest difference in probability between the reloaded Keras file and backbone +
    scikit-learn head on ``check`` random images (one random colour each, plus noise: pure noise
    saturates the probabilities at 0 and 1)."""
    import keras

    from extract.model import preprocess_fn

    size = settings.size
    rng = np.random.default_rng(0)
    imgs = np.clip(rng.uniform(0, 255, (check, 1, 1, 3)) + rng.normal(0, 30, (check, size, size, 3)),
                   0, 255).astype(np.float32)
    emb = np.asarray(backbone(preprocess_fn(settings.backbone)(imgs.copy()), training=False), np.float32)
    want = pipe.predict_proba(emb)
    got = np.asarray(keras.models.load_model(path).predict(imgs, verbose=0))
    return float(np.abs(got - want).max())


def export_keras(out_dir, path, head: str | None = None, check: int = 8, log=print) -> dict:
    """Writes the head and its backbone as one Keras model: images -> class probabilities.

    The model takes ``(b, SIZE, SIZE, 3)`` float RGB values 0..255, already resized by the
    resize rule (centre square, bilinear); it applies the backbone's preprocessing itself (as
    fixed layers, so the file loads without this tool or custom code), then the backbone, then
    the head folded into one Dense softmax layer. Only ``logreg`` is exported: its
    StandardScaler and LogisticRegression fold exactly into ``softmax(W x + b)``.

    Args:
        out_dir: OUT, holding ``models/<head>.skops``.
        path: the ``.keras`` file to write.
        head: the head (default: the answer's best, :func:`best_head`).
        check: random images (one colour each, plus noise) on which the reloaded file is
            compared with the backbone and the scikit-learn head.

    Returns:
        ``{"path", "head", "classes", "max_abs_diff"}``: the largest difference in probability
        between the reloaded Keras file and backbone + scikit-learn on ``check`` random images.

    Raises:
        DataError: a head other than logreg, or no models.
        SettingsMismatch, WeightsUnavailable: as for prediction.
        RuntimeError: the file does not reproduce the head (it is removed).
    """
    bundle = load_head(out_dir, head)
    if bundle["head"] != "logreg":
        raise DataError(f"only the logreg head folds into a Keras layer; received HEAD={bundle['head']} "
                        "(pass HEAD=logreg)")
    settings = settings_of(bundle)
    pipe = bundle["model"]
    coef, icpt = fold_logreg(pipe)

    from extract._tf import tensorflow

    tensorflow()
    import keras

    from extract.model import build

    backbone = build(settings)
    keras.mixed_precision.set_global_policy("float32")
    size = settings.size
    inp = keras.Input((size, size, 3), name="rgb_0_255")
    # keras.applications.vgg16.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet mean.
    if BACKBONES[settings.backbone][1] != "vgg16":
        raise DataError(f"export knows the preprocessing of vgg16 only; received {settings.backbone}")
    perm = np.zeros((1, 1, 3, 3), np.float32)
    for o in range(3):
        perm[0, 0, 2 - o, o] = 1.0
    pre = keras.layers.Conv2D(3, 1, name="vgg16_preprocess", trainable=False)
    x = pre(inp)
    pre.set_weights([perm, -np.array([103.939, 116.779, 123.68], np.float32)])
    x = backbone(x)
    x = keras.layers.Activation("linear", dtype="float32", name="embedding")(x)
    dense = keras.layers.Dense(coef.shape[0], activation="softmax", dtype="float32", name=f"head_{bundle['head']}")
    probs = dense(x)
    dense.set_weights([coef.T.astype(np.float32), icpt.astype(np.float32)])
    full = keras.Model(inp, probs, name=f"{settings.key}-{bundle['head']}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full.save(path)

    diff = _export_difference(path, backbone, pipe, settings, check)
    if not diff < 1e-3:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"the exported model differs from the scikit-learn head by {diff:.3g} "
                           f"in probability on random images; {path} was removed")
    log(f"exported {bundle['head']} on {settings.key} to {path}: input (b, {size}, {size}, 3) RGB "
        f"0..255, output probabilities of {list(bundle['class_names'])}; max |keras - sklearn| "
        f"= {diff:.2e} on {check} random images")
    return {"path": str(path), "head": bundle["head"], "classes": list(bundle["class_names"]),
            "max_abs_diff": diff}


# --------------------------------------------------------------------------- command line

# given extraction settings are checked against the run's and the head's: (flag, field, the
# head's settings key, type)
SETTING_FLAGS = [("--backbone", "backbone", "backbone", str), ("--weights", "weights", "weights", str),
                 ("--size", "size", "image_size", int), ("--pooling", "pooling", "pooling", str),
                 ("--precision", "precision", "precision", str), ("--layer", "layer", "layer", str)]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify.predict", description=(
        f"Classify image files or folders with a saved head -> OUT/{OUTPUT}. FEATURES defaults to "
        "the run's in OUT (run.json); IN and extraction settings that are given must agree with "
        "the run's and the head's."))
    p.add_argument("images", nargs="*", help="files or folders (IMAGES)")
    p.add_argument("--features", default=None, help="cache root (FEATURES); default: the run's")
    p.add_argument("--in", dest="in_dir", default=None, help="IN: checked against the run's")
    p.add_argument("--dataset", default=None, help="DATASET: checked against the run's")
    for flag, dest, _, kind in SETTING_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=None,
                       help=f"{dest.upper()}: checked against the run's and the head's")
    p.add_argument("--out", default="out", help="where make compare wrote models/ (OUT)")
    p.add_argument("--head", default="", help="head to use (HEAD); empty: the answer's best")
    p.add_argument("--batch", type=int, default=32, help="images per model call (BATCH)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="MAX_PIXELS")
    p.add_argument("--export", metavar="FILE.keras", default=None,
                   help="write the head (logreg) and its backbone as one Keras model file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def check_given(args: argparse.Namespace, log=print) -> str:
    """FEATURES to use: the given one, else the run's; refuses IN, DATASET and extraction
    settings that conflict with the run in OUT or with the head's own settings.

    Raises:
        DataError: naming the given value and the run's or the head's.
    """
    from .remembered import agrees, remember

    fields = ("in_dir", "features", "dataset") + tuple(d for _, d, _, _ in SETTING_FLAGS)
    inputs = remember(args.out, {f: getattr(args, f) for f in fields})
    if inputs.said():
        log(inputs.said())
    for note in inputs.notes:
        log(note)
    if not args.images and not args.export:
        return str(inputs["features"])
    bundle = load_head(args.out, args.head or None)
    rec = bundle.get("settings") or {}
    clashes = [(dest.upper(), getattr(args, dest), rec.get(key)) for _, dest, key, _ in SETTING_FLAGS
               if getattr(args, dest) not in (None, "") and rec.get(key) not in (None, "")
               and not agrees(dest, getattr(args, dest), rec.get(key))]
    if clashes:
        said = "; ".join(f"{n}={g} was given, but head {bundle['head']!r} was trained on {n}={h}"
                         for n, g, h in clashes)
        raise SettingsMismatch(
            f"{said} ({models_dir(args.out) / bundle['head']}.json). A head classifies only vectors of "
            f"its own settings: leave {' '.join(n for n, _, _ in clashes)} out to use them, or train a "
            "head on yours first: make features && make compare OUT=<another folder> "
            + " ".join(f"{n}={g}" for n, g, _ in clashes))
    return str(inputs["features"])


def _print_result(df: pd.DataFrame, out_dir) -> int:
    """The table, a summary line and the weights error; returns the exit status."""
    shown = df.assign(
        score=df["score"].map(lambda v: "" if math.isnan(v) else f"{v:.4f}"),
        error=df["error"].map(lambda e: e if len(e) <= 70 else e[:67] + "..."))
    print(shown.to_string(index=False))
    n_ok = int((df["error"] == "").sum())
    a = df.attrs
    print(f"\npredicted {n_ok:,} of {plural(len(df), 'file')} with head {a['head']} on {a['features_key']} "
          f"({a['cached']:,} from the cache, {a['embedded']:,} embedded, {plural(len(df) - n_ok, 'error')}) "
          f"-> {Path(out_dir) / OUTPUT} (full error messages there)")
    if a.get("weights_error"):
        print(f"{'error' if n_ok == 0 else 'warning'}: {a['weights_error']}", file=sys.stderr)
    if n_ok == 0:
        print("error: no file could be classified; the error column says why", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    try:
        features = check_given(args)
        if args.export:
            export_keras(args.out, args.export, args.head or None)
            if not args.images:
                return 0
        df = predict_images(args.images, features, args.out, args.head or None,
                            batch=args.batch, max_pixels=args.max_pixels,
                            progress=not args.quiet)
    except (DataError, ValueError, FileNotFoundError, WeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing written", file=sys.stderr)
        return 130
    return _print_result(df, args.out)


if __name__ == "__main__":
    sys.exit(main())
