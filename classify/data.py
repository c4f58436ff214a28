"""Read the cached embeddings of one extraction setting and split them; no TensorFlow here."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from extract.cache import CacheError, read_cache
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


def features_command(settings: Settings, in_dir: str = "in", features: str = "features") -> str:
    """The ``make features`` command that creates the cache of ``settings``."""
    return (f"make features IN={in_dir} FEATURES={features} BACKBONE={settings.backbone} "
            f"WEIGHTS={settings.weights} SIZE={settings.size} POOLING={settings.pooling} "
            f"PRECISION={settings.precision}" + (f" LAYER={settings.layer}" if settings.layer else ""))


def load_features(features_dir, settings: Settings, in_dir: str = "in",
                  fallback_none: bool = False) -> Features:
    """Loads and checks ``features_dir/<settings.key>``.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting whose cache is wanted.
        in_dir: only used to word the hint when the cache is missing.
        fallback_none: (demo) when the ImageNet cache is missing, use the random-weights one.

    Raises:
        DataError: the cache is missing (naming the command that makes it) or damaged.
    """
    features_dir = Path(features_dir)
    folder = features_dir / settings.key
    if fallback_none and not folder.is_dir() and settings.weights == "imagenet":
        alt = dataclasses.replace(settings, weights="none")
        if (features_dir / alt.key).is_dir():
            settings, folder = alt, features_dir / alt.key
    if not folder.is_dir():
        others = sorted(p.name for p in features_dir.glob("*") if p.is_dir() and not p.name.startswith("."))
        hint = f" (cached settings there: {', '.join(others)})" if others else ""
        raise DataError(
            f"no features yet for {settings.key} in {features_dir}{hint}; make them with: "
            f"{features_command(settings, in_dir, str(features_dir))}"
        )
    try:
        X, rows, meta = read_cache(folder, mmap=False)
    except FileNotFoundError as err:
        raise DataError(f"the cache {folder} is incomplete ({err}); run "
                        f"{features_command(settings, in_dir, str(features_dir))} again") from None
    except CacheError as err:
        raise DataError(str(err)) from None
    manifest = pd.DataFrame(rows, columns=list(rows[0].keys()) if rows else ["path", "label", "split", "sha256"])
    manifest = manifest.fillna("")
    if manifest["path"].duplicated().any():
        dup = manifest["path"][manifest["path"].duplicated()].iloc[0]
        raise DataError(f"{folder / 'manifest.csv'} lists {dup!r} twice; run make features again")
    return Features(np.asarray(X, dtype=np.float32), manifest, meta, settings.key, folder)


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
