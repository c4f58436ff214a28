"""Read the cached embeddings of one extraction setting and split them; no TensorFlow here."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from extract.cache import CacheError, caches_of_key, input_id, open_cache
from extract.backbones import BACKBONES
from extract.model import Settings
from extract.notices import plural

EVAL_SPLITS = ("test", "val", "valid", "validation")


class DataError(ValueError):
    """Input that stage 2 cannot work with; the message says what to do."""


@dataclasses.dataclass
class Features:
    """The cache of one key: embeddings row-aligned with the manifest."""

    X: np.ndarray  # float32 (N, D)
    manifest: pd.DataFrame  # path, label, split, sha256, ...
    meta: dict
    key: str
    folder: Path

    @property
    def class_names(self) -> list[str]:
        return sorted(self.manifest["label"].unique().tolist())


def features_command(settings: Settings, in_dir: str = "in", features: str = "features",
                     dataset: str | None = None) -> str:
    """The ``make features`` command that creates the cache of ``settings`` (``SIZE`` left out
    when the backbone's own default is meant)."""
    size = f" SIZE={settings.size}" if settings.size is not None else ""
    return (f"make features IN={in_dir} FEATURES={features} BACKBONE={settings.backbone} "
            f"WEIGHTS={settings.weights}{size} POOLING={settings.pooling} "
            f"PRECISION={settings.precision}" + (f" LAYER={settings.layer}" if settings.layer else "")
            + (f" DATASET={dataset}" if dataset else ""))


def cached_commands(root: Path, in_dir: str, features: str, dataset: str | None = None) -> list[str]:
    """A ready-to-copy ``make compare`` command for each setting cached for this input under
    ``root`` (``FEATURES/<input-id>``), from each cache's meta.json; caches without a readable
    meta.json are left out."""
    import json

    commands = []
    for meta_path in sorted(Path(root).glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        words = [f"make compare IN={in_dir} FEATURES={features}"]
        if meta.get("backbone") == "imported":
            words.append("BACKBONE=imported")
        else:
            words.append(f"BACKBONE={meta.get('backbone')} WEIGHTS={meta.get('weights')}")
            if meta.get("image_size") is not None:
                words.append(f"SIZE={meta.get('image_size')}")
            if meta.get("pooling") not in (None, "avg"):
                words.append(f"POOLING={meta['pooling']}")
            if meta.get("precision") not in (None, "fp32"):
                words.append(f"PRECISION={meta['precision']}")
            if meta.get("layer"):
                words.append(f"LAYER={meta['layer']}")
        if dataset:
            words.append(f"DATASET={dataset}")
        commands.append(" ".join(words))
    return commands


def _cached_hint(root: Path, in_dir: str, features: str, dataset: str | None) -> str:
    """The cached settings of this input as ``make compare`` commands, one per line, or ''."""
    commands = cached_commands(root, in_dir, features, dataset)
    if not commands:
        return ""
    return ("\nsettings cached for this input, ready to compare:\n" + "\n".join(f"  {c}" for c in commands))


def _imported_folder(root: Path) -> Path:
    """The single ``imported-<dim>`` cache of a dataset (``BACKBONE=imported``)."""
    found = sorted(p for p in root.glob("imported-*") if p.is_dir())
    if len(found) > 1:
        raise DataError(f"{root} holds several imported caches ({', '.join(p.name for p in found)}); "
                        "remove the ones you do not want")
    if not found:
        raise DataError(f"no imported vectors in {root}; make them with: make import "
                        f"EMBEDDINGS=<file.npy> LABELS=<file.csv> DATASET={root.name}")
    return found[0]


def _missing(features_dir: Path, root: Path, settings: Settings, in_dir: str,
             dataset: str | None) -> DataError:
    """The message for a cache that is not there: the command that makes it, then each setting
    cached for this input as a ready-to-copy ``make compare`` command."""
    command = features_command(settings, in_dir, str(features_dir), dataset)
    hint = ""
    if (features_dir / settings.key / "manifest.csv").is_file():
        hint += (f"; {features_dir / settings.key} is a cache of the layout before input folders: "
                 "the command reuses its vectors, nothing is computed again")
    elif caches_of_key(features_dir, settings.key):
        hint += ("; other inputs have this setting cached, so images they share with this one "
                 "are not computed again")
    return DataError(f"no features yet for {settings.key} of {in_dir} in {root}{hint}; make them "
                     f"with: {command}" + _cached_hint(root, in_dir, str(features_dir), dataset))


def load_features(features_dir, settings: Settings, in_dir: str = "in",
                  fallback_none: bool = False, dataset: str | None = None) -> Features:
    """Loads and checks the cache of ``in_dir`` and ``settings``: ``FEATURES/<input-id>/<key>``.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting whose cache is wanted (``backbone="imported"``: the
            dataset's imported vectors, whatever their width).
        in_dir: the input folder; stage 2 works on exactly its images, so a cache recorded
            for another folder is refused.
        fallback_none: (demo) when the ImageNet cache is missing, use the random-weights one.
        dataset: ``DATASET``, the input's folder name under FEATURES when it is not derived
            from ``in_dir``.

    Raises:
        DataError: the cache is missing (naming the command that makes it), damaged, or
            belongs to another input folder.
    """
    features_dir = Path(features_dir)
    try:
        root = features_dir / input_id(in_dir, dataset)
    except ValueError as err:
        raise DataError(str(err)) from None
    if settings.backbone != "imported" and settings.backbone not in BACKBONES:
        raise DataError(f"BACKBONE must be one of {', '.join(BACKBONES)} (or imported); received "
                        f"{settings.backbone!r}" + _cached_hint(root, in_dir, str(features_dir), dataset))
    if settings.backbone == "imported":
        folder = _imported_folder(root)
    else:
        folder = root / settings.key
        if fallback_none and not folder.is_dir() and settings.weights == "imagenet":
            alt = dataclasses.replace(settings, weights="none")
            if (root / alt.key).is_dir():
                settings, folder = alt, root / alt.key
        if not folder.is_dir():
            raise _missing(features_dir, root, settings, in_dir, dataset)
    try:
        X, manifest, meta = open_cache(folder, mmap=False)
    except FileNotFoundError as err:
        raise DataError(f"the cache {folder} is incomplete ({err}); run "
                        f"{features_command(settings, in_dir, str(features_dir), dataset)} again") from None
    except CacheError as err:
        raise DataError(str(err)) from None
    recorded = meta.get("input")
    if meta.get("backbone") != "imported" and recorded and recorded != os.path.abspath(in_dir):
        raise DataError(
            f"the cache {folder} was made from the folder {recorded}, not from IN={in_dir} "
            f"({os.path.abspath(in_dir)}); stage 2 uses exactly the images of IN: run "
            f"{features_command(settings, in_dir, str(features_dir))} (without DATASET, or with a "
            "DATASET name of its own)")
    manifest = manifest.astype({c: str for c in ("label", "split") if c in manifest})
    if manifest["path"].duplicated().any():
        dup = manifest["path"][manifest["path"].duplicated()].iloc[0]
        raise DataError(f"{folder / 'manifest.csv'} lists {dup!r} twice; run make features again")
    return Features(np.asarray(X, dtype=np.float32), manifest, meta, folder.name, folder)


STALE_CHOICES = ("stop", "ok")  # STALE: what stage 2 does when IN has changed since the cache
STALE_EXAMPLES = 3  # paths named in the message, of each kind


def input_changes(feats: Features, in_dir, dataset: str | None = None) -> tuple[Path, list[str], list[str]] | None:
    """The images added to and removed from the cache's input folder since it was extracted.

    The folder is the one ``meta.json`` records as the cache's input (its manifest's paths are
    relative to it), else ``in_dir`` when the cache was found by IN's own name (no ``dataset``).
    It is listed as ``make features`` lists it (:func:`extract.files.list_images`: names and
    sizes, no image is read or hashed); a file the cache's ``rejected.csv`` names was seen and
    refused then, so it does not count as added.

    Returns:
        (the folder, added paths, removed paths), sorted; None when there is nothing to check
        against: an imported cache (its paths are identifiers, not files), or a ``DATASET``
        cache that does not record its input folder.

    Raises:
        FileNotFoundError: the folder does not exist or cannot be listed.
    """
    from extract.atomic import read_csv_rows
    from extract.files import list_images

    recorded = feats.meta.get("input")
    if feats.meta.get("backbone") == "imported" or not (recorded or not dataset):
        return None
    folder = Path(recorded or in_dir)
    listed = {c.path for c in list_images(folder).candidates}
    cached = set(feats.manifest["path"].astype(str))
    try:
        refused = {row["path"] for row in read_csv_rows(feats.folder / "rejected.csv")}
    except (OSError, ValueError, KeyError):
        refused = set()
    return folder, sorted(listed - cached - refused), sorted(cached - listed)


def check_input(feats: Features, in_dir, command: str, stale: str = "stop", log=print,
                dataset: str | None = None) -> None:
    """Stage 2 uses exactly the images of IN: stops when images were added or removed since the
    cache was made (see :func:`input_changes`), unless ``stale`` is ``ok``.

    A folder that is not there (moved away after extraction) is said in one warning line and the
    cache is used as it is; an imported cache is not checked.

    Args:
        feats: the loaded cache.
        in_dir: IN, as the user gave it.
        command: the ``make features`` command that brings the cache up to date.
        stale: ``stop`` (STALE's default) or ``ok`` (use the cache as it is, with a warning).
        log: where warnings go.
        dataset: ``DATASET``, when the cache was found by it rather than by IN's name.

    Raises:
        ValueError: ``stale`` is not one of :data:`STALE_CHOICES`.
        DataError: images added or removed, with ``stale=stop``: the counts, a few paths and the
            command.
    """
    if stale not in STALE_CHOICES:
        raise ValueError(f"STALE must be one of {', '.join(STALE_CHOICES)}; received {stale!r}")
    try:
        found = input_changes(feats, in_dir, dataset)
    except FileNotFoundError:
        log(f"warning: the input folder {feats.meta.get('input') or in_dir} is not there (moved or "
            f"deleted after make features?): the cache {feats.folder} is used as it is, unchecked")
        return
    if found is None or not (found[1] or found[2]):
        return
    folder, added, removed = found

    def some(paths):
        return ", ".join(paths[:STALE_EXAMPLES]) + (", ..." if len(paths) > STALE_EXAMPLES else "")

    what = "; ".join(part for part in (
        f"{plural(len(added), 'image')} added (e.g. {some(added)})" if added else "",
        f"{len(removed) if added else plural(len(removed), 'image')} removed (e.g. {some(removed)})"
        if removed else "") if part)
    text = f"{folder} has changed since its features were extracted: {what}"
    if stale == "ok":
        log(f"warning: {text}; STALE=ok: the cache is used as it is ({len(feats.manifest)} images)")
        return
    raise DataError(f"{text}; stage 2 uses exactly the images of IN: run {command} (only the new "
                    "images are embedded) and compare again, or add STALE=ok to use the cache as it is")


def require_two_classes(feats: Features, who: str = "a classifier") -> None:
    """Refuses a cache whose images all carry one label, saying where the labels come from.

    Raises:
        DataError: one class only: for images, the class folders under IN; for imported vectors,
            the label column of the LABELS file they were imported with.
    """
    labels = feats.manifest["label"]
    if labels.nunique() >= 2:
        return
    only = labels.iloc[0] if len(labels) else ""
    if feats.meta.get("backbone") == "imported":
        source = feats.meta.get("input") or "the LABELS file"
        raise DataError(f"{feats.folder} holds one class only ({only!r}): every row of {source} has "
                        f"that label, and {who} needs at least two; import labels of two or more "
                        f"classes (make import EMBEDDINGS=... LABELS=... DATASET={feats.folder.parent.name})")
    raise DataError(f"{feats.folder} holds one class only ({only!r}); {who} needs at least two class "
                    "folders under IN (IN/<class>/<image>): add a folder of images of another class")


def _rank(seed: int, sha: str, path: str) -> str:
    return hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest() + path


def unit_ids(*keys) -> np.ndarray:
    """One id per row: rows that share a value of any key (transitively) share an id.

    Used to join exact copies (same ``sha256``) with duplicate clusters, so that a unit of the
    hold-out and of the folds never separates two rows that any key ties together.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(keys[0])
    src, dst = [], []
    for key in keys:
        codes = pd.factorize(pd.Series(list(key)).astype(str))[0]
        order = np.argsort(codes, kind="stable")
        same = codes[order][1:] == codes[order][:-1]
        src.append(order[1:][same])
        dst.append(order[:-1][same])
    i, j = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def content_key(manifest: pd.DataFrame) -> pd.Series:
    """Per row, what identifies its content: the ``sha256``, or the path when it has none."""
    sha = manifest["sha256"].astype(str)
    return sha.where(sha != "", "path:" + manifest["path"].astype(str))


def label_conflicts(manifest: pd.DataFrame) -> list[dict]:
    """Exact copies (same ``sha256``) filed under different labels: at most one label is right.

    Returns:
        One dict per such content, ``{"sha256", "labels", "paths"}`` (labels and paths sorted),
        ordered by their first path.
    """
    sha = manifest["sha256"].astype(str)
    known = manifest[sha != ""]
    n_labels = known.groupby("sha256")["label"].nunique()
    mixed = known[known["sha256"].isin(n_labels.index[n_labels > 1])]
    out = []
    for digest, group in mixed.groupby("sha256", sort=False):
        out.append({"sha256": str(digest), "labels": sorted(set(group["label"].astype(str))),
                    "paths": sorted(group["path"].astype(str))})
    return sorted(out, key=lambda c: c["paths"][0])


def copies_across(manifest: pd.DataFrame, role: pd.Series, of: str = "train") -> list[str]:
    """Paths of evaluated images whose exact copy (same ``sha256``) has role ``of``: trained on
    (``train``), or used to choose settings (``tune``, the validation folder).

    Only split folders can cause this (the hold-out keeps copies on one side); they are the
    user's decision, so the images are reported, not moved.
    """
    key = content_key(manifest)
    seen = set(key[role == of])
    hit = (role == "eval") & key.isin(seen)
    return sorted(manifest.loc[hit, "path"].astype(str))


def describe_conflict(conflict: dict) -> str:
    """One console line for a label conflict."""
    return (f"warning: label conflict: one file (sha256 {conflict['sha256'][:12]}...) is filed as "
            f"{' and '.join(repr(c) for c in conflict['labels'])}: {', '.join(conflict['paths'])}; "
            "its copies are kept together, but at most one label is right: fix or remove the others")


def assign_split(manifest: pd.DataFrame, test_size: float, seed: int,
                 units=None) -> tuple[pd.Series, str]:
    """Decides which rows train and which are evaluated.

    With split folders: ``train`` trains, ``test`` is evaluated (else ``val``/``valid``/
    ``validation``), and beside ``test`` a validation folder is for tuning (role ``tune``); the
    folders are the user's decision and ``units`` is ignored. Without: a
    stratified hold-out of ``test_size`` per class made of whole units, drawn in a seeded hash
    order of their content, so the choice is reproducible and stays put when images are added.
    A unit is the set of exact copies of one file (same ``sha256``, whatever their labels),
    joined with ``units`` when given (duplicate clusters, ``GROUPS=dups``). See
    :func:`balanced_holdout` for the rule.

    Returns:
        (a Series of "train"/"eval"/"tune"/"" per row, a sentence describing the rule used).

    Raises:
        DataError: no training or evaluation folder, or a bad ``test_size``.
    """
    splits = set(manifest["split"]) - {""}
    if splits:
        if "train" not in splits:
            raise DataError(f"split folders {sorted(splits)} have no 'train'; add IN/train/<class>/...")
        eval_name = eval_split_of(manifest)
        if eval_name is None:
            raise DataError(f"split folders {sorted(splits)} have no test/val/valid folder to evaluate on")
        tune_name = tune_split_of(manifest)
        role = manifest["split"].map({"train": "train", eval_name: "eval", tune_name: "tune"}).fillna("")
        return role, f"split folders: trained on 'train', evaluated on '{eval_name}'"
    if not 0 < test_size < 1:
        raise DataError(f"TEST_SIZE must be between 0 and 1 (a fraction); received {test_size!r}")
    keys = [content_key(manifest)]
    if units is not None:
        keys.append(np.asarray(units))
    unit = unit_ids(*keys)
    role = balanced_holdout(manifest["label"].astype(str).to_numpy(), unit,
                            manifest["sha256"].astype(str).to_numpy(), test_size, seed)
    return pd.Series(role, index=manifest.index), \
        f"stratified hold-out of {test_size:g} per class, seeded by SEED={seed}"


DEFAULT_TEST_SIZE = 0.2  # TEST_SIZE when it is not given


def test_size_for(manifest: pd.DataFrame, test_size: float | None) -> float:
    """``TEST_SIZE`` as given (None: not given) -> the hold-out fraction to use.

    Split folders decide the split themselves, so a ``TEST_SIZE`` given beside them would be
    silently ignored: it is refused instead, naming the folders.

    Raises:
        DataError: ``test_size`` given while the input has split folders.
    """
    splits = sorted(set(manifest["split"]) - {""})
    if test_size is None:
        return DEFAULT_TEST_SIZE
    if splits:
        folders = ", ".join(f"{s}/" for s in splits)
        raise DataError(f"TEST_SIZE={test_size:g} was given, but IN has the split folders {folders}, "
                        "which decide what is trained on and what is evaluated, so TEST_SIZE would be "
                        "ignored: leave TEST_SIZE out, or put the class folders directly under IN "
                        "(without split folders) to hold out TEST_SIZE of each class")
    return float(test_size)


def eval_split_of(manifest: pd.DataFrame) -> str | None:
    """The split folder that is evaluated on: test, else val, valid, validation (None: none)."""
    splits = set(manifest["split"]) - {""}
    return next((s for s in EVAL_SPLITS if s in splits), None)


def tune_split_of(manifest: pd.DataFrame) -> str | None:
    """The validation folder beside an evaluated ``test`` folder (val, valid or validation): the
    images that tuning selects on (None: none, or it is the evaluated one)."""
    splits = set(manifest["split"]) - {""}
    if eval_split_of(manifest) != "test":
        return None
    return next((s for s in EVAL_SPLITS[1:] if s in splits), None)


MIN_TRAIN_UNITS = 2  # units a class keeps for training: cross-validation needs two


def balanced_holdout(labels: np.ndarray, unit: np.ndarray, sha: np.ndarray, test_size: float,
                     seed: int) -> np.ndarray:
    """Moves whole units to the evaluated side until each class has its share.

    Each class c of n_c images gets a target of ``round(test_size * n_c)`` evaluated images (at
    least one). Units are visited in a seeded hash order of their smallest content hash; a unit
    is evaluated when that keeps every class it holds at or below its target and leaves each of
    those classes at least ``MIN_TRAIN_UNITS`` training units; otherwise it trains. Large units
    that would overshoot are passed over and smaller ones fill the share, so the evaluated share
    stays close to ``test_size`` overall and per class, and no class loses its training images.
    A class with fewer than ``MIN_TRAIN_UNITS + 1`` units is not held out at all.

    Returns:
        "train" or "eval" per row.
    """
    frame = pd.DataFrame({"label": labels, "unit": unit, "sha": sha})
    per_class = frame.groupby("label")["unit"].nunique()
    sizes = frame.groupby("label").size()
    target = {c: (max(1, int(round(test_size * sizes[c]))) if per_class[c] > MIN_TRAIN_UNITS else 0)
              for c in sizes.index}
    train_units = per_class.to_dict()
    taken = dict.fromkeys(sizes.index, 0)
    held_by_unit: dict = {}
    for (u, c), k in frame.groupby(["unit", "label"]).size().items():
        held_by_unit.setdefault(u, []).append((c, k))
    frame["rank"] = [_rank(seed, v, "") for v in sha]
    rank = frame.groupby("unit")["rank"].min()
    evaluated = set()
    for u in rank.sort_values(kind="stable").index:
        held = held_by_unit[u]
        if all(taken[c] + k <= target[c] and train_units[c] > MIN_TRAIN_UNITS for c, k in held):
            evaluated.add(u)
            for c, k in held:
                taken[c] += k
                train_units[c] -= 1
    return np.where(np.isin(unit, list(evaluated)), "eval", "train")


def check_coverage(manifest: pd.DataFrame, role: pd.Series, log=print) -> list[str]:
    """Checks that every class the heads will see can be trained on and evaluated.

    * A class with evaluated but no training images is an **error**: no head can predict a
      class it never saw, so its images would count as certain mistakes and every score would
      be wrong for a reason that is not the model's.
    * A class with training but no evaluated images is a **warning**: the heads are still
      valid, only that class's precision and recall are not measured.
    * A class found only in rows that are neither (an unused split folder, or the validation
      folder that tuning selects on) is a **warning**: it is ignored and is not among the
      model's classes.

    Returns:
        The model's classes: the sorted labels of the training rows.

    Raises:
        DataError: naming the class, where its images are and what to do.
    """
    labels = manifest["label"].astype(str)
    split = manifest["split"].astype(str)
    train = set(labels[role == "train"])
    evaluated = set(labels[role == "eval"])
    eval_name = eval_split_of(manifest)
    for c in sorted(evaluated - train):
        n = int(((labels == c) & (role == "eval")).sum())
        where = f" ({eval_name}/)" if eval_name else ""
        todo = (f"add images under IN/train/{c}/, or remove IN/{eval_name}/{c}/" if eval_name
                else f"add images to IN/{c}/")
        raise DataError(
            f"class {c!r} has {n} evaluated images{where} but no training images: no head can "
            f"predict a class it never saw, so every score would count them as certain mistakes; "
            f"{todo}")
    for c in sorted(train - evaluated):
        n = int((labels == c).sum())
        if eval_name:
            log(f"warning: class {c!r} has training images but none evaluated (no {eval_name}/{c}/ "
                "folder): the heads learn it, but its precision and recall are not measured")
        else:
            log(f"warning: class {c!r} has {n} images (copies counted once: too few to hold any out; "
                f"a class needs {MIN_TRAIN_UNITS + 1} different images) and is only trained on: its "
                "precision and recall are not measured; add images to it")
    aside = role.isin(["", "tune"])  # unused split folders, and the validation folder of tuning
    unused = sorted(set(labels[aside]) - train - evaluated)
    for c in unused:
        folders = sorted(set(split[(labels == c) & aside]))
        log(f"warning: class {c!r} exists only in {', '.join(f + '/' for f in folders)}, which is "
            "neither trained on nor evaluated: ignored (not among the model's classes)")
    return sorted(train)


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int):
    """``k`` folds that never split a group and are stratified by each group's first label.

    scikit-learn's ``StratifiedGroupKFold`` balances fold sizes more finely but loops over the
    groups in Python (74 s for 160,000 groups here); this stratifies one row per group with
    ``StratifiedKFold`` and gives each group's rows that row's fold (under a second).

    Returns:
        (list of (train, test) positions, the test fold of each row).
    """
    import warnings

    from sklearn.model_selection import StratifiedKFold

    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The least populated class ..."
        group_splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(first, y[first])
        fold_of_group = np.empty(len(first), int)
        for f, (_, test) in enumerate(group_splits):
            fold_of_group[test] = f
    fold_of = fold_of_group[inverse.ravel()]
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)], fold_of


def cv_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int, log=print):
    """Stratified group folds on the training part that every class can take part in.

    A group (an image with its exact copies, or a duplicate cluster) is never split between
    folds. The number of folds is lowered to the smallest number of groups in a class, and
    further when a fold's training part would miss a class.

    Args:
        y: labels of the training rows.
        groups: group id per training row.
        folds: the folds wanted (FOLDS).
        seed: shuffles the folds.
        log: receives a warning when fewer folds are used.

    Returns:
        (list of (train, test) positions into ``y``, the test fold of each row).

    Raises:
        DataError: FOLDS below 2, a class with fewer than 2 groups, or no valid folds.
    """
    if folds < 2:
        raise DataError(f"FOLDS must be at least 2; received {folds}")
    classes = np.unique(y)
    per_class = {c: len(np.unique(groups[y == c])) for c in classes}
    smallest = min(per_class, key=per_class.get)
    n = per_class[smallest]
    smallest = str(smallest)
    if n < 2:
        raise DataError(
            f"class {smallest!r} has {int((y == smallest).sum())} training images in {n} group "
            "(an image and its copies or near-duplicates count once); cross-validation needs at "
            "least 2 different images per class: add images to it or remove its folder")
    k = min(folds, n)
    if k < folds:
        log(f"warning: class {smallest!r} has only {n} duplicate groups in the training part (an "
            f"image and its copies count once), fewer than FOLDS={folds}; using {k}-fold "
            "cross-validation")
    for k_try in range(k, 1, -1):
        splits, fold_of = stratified_group_folds(y, groups, k_try, seed)
        if all(len(np.unique(y[tr])) == len(classes) for tr, _ in splits):
            if k_try < k:
                log(f"warning: with {k} folds a training fold would miss a class; using "
                    f"{k_try}-fold cross-validation")
            return splits, fold_of
    raise DataError("no cross-validation folds give every class training images; add images "
                    "to the smallest classes (or near-duplicate clusters) or use GROUPS=none")
