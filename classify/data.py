"""Read the cached embeddings of one extraction setting and split them; no TensorFlow here."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from extract.cache import CacheError, caches_of_key, input_id, open_cache
from extract.model import Settings

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
    """The ``make features`` command that creates the cache of ``settings``."""
    return (f"make features IN={in_dir} FEATURES={features} BACKBONE={settings.backbone} "
            f"WEIGHTS={settings.weights} SIZE={settings.size} POOLING={settings.pooling} "
            f"PRECISION={settings.precision}" + (f" LAYER={settings.layer}" if settings.layer else "")
            + (f" DATASET={dataset}" if dataset else ""))


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
    """The message for a cache that is not there, with what is there instead."""
    command = features_command(settings, in_dir, str(features_dir), dataset)
    here = sorted(p.name for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    hint = f" (settings cached for this input: {', '.join(here)})" if here else ""
    if (features_dir / settings.key / "manifest.csv").is_file():
        hint += (f"; {features_dir / settings.key} is a cache of the layout before input folders: "
                 "the command reuses its vectors, nothing is computed again")
    elif caches_of_key(features_dir, settings.key):
        hint += ("; other inputs have this setting cached, so images they share with this one "
                 "are not computed again")
    return DataError(f"no features yet for {settings.key} of {in_dir} in {root}{hint}; make them "
                     f"with: {command}")


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


def _rank(seed: int, sha: str, path: str) -> str:
    return hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest() + path


def assign_split(manifest: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.Series, str]:
    """Decides which rows train and which are evaluated.

    With split folders: ``train`` trains, ``test`` is evaluated (else ``val``/``valid``/
    ``validation``). Without: a stratified hold-out of ``test_size`` per class, chosen by a
    seeded hash of each file's content, so the choice is reproducible, stays put when images are
    added, and keeps copies of one file (same label, same content) on the same side.

    Returns:
        (a Series of "train"/"eval"/"" per row, a sentence describing the rule used).

    Raises:
        DataError: no training or evaluation rows, or a bad ``test_size``.
    """
    splits = set(manifest["split"]) - {""}
    if splits:
        if "train" not in splits:
            raise DataError(f"split folders {sorted(splits)} have no 'train'; add IN/train/<class>/...")
        eval_name = next((s for s in EVAL_SPLITS if s in splits), None)
        if eval_name is None:
            raise DataError(f"split folders {sorted(splits)} have no test/val/valid folder to evaluate on")
        role = manifest["split"].map({"train": "train", eval_name: "eval"}).fillna("")
        return role, f"split folders: trained on 'train', evaluated on '{eval_name}'"
    if not 0 < test_size < 1:
        raise DataError(f"TEST_SIZE must be between 0 and 1 (a fraction); received {test_size!r}")
    role = pd.Series("train", index=manifest.index)
    for label, group in manifest.groupby("label", sort=True):
        # Whole contents are drawn, not rows, so copies of one file stay on one side.
        by_sha = group.groupby("sha256", sort=False).groups
        order = sorted(by_sha, key=lambda sha: _rank(seed, sha, ""))
        n_eval = int(round(test_size * len(group)))
        n_eval = min(max(n_eval, 1), len(group) - 1) if len(group) >= 2 else 0
        taken = 0
        for sha in order:
            if taken >= n_eval or taken + len(by_sha[sha]) > len(group) - 1:
                break
            role.loc[by_sha[sha]] = "eval"
            taken += len(by_sha[sha])
    return role, f"stratified hold-out of {test_size:g} per class, seeded by SEED={seed}"
