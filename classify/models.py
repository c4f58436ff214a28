"""Saved heads: skops files that cannot run code when loaded, with a JSON sidecar each."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

from extract.atomic import atomic_write, write_json

from .data import DataError

# Modules that importing skops.io would load for nothing: skops lists every scikit-learn
# estimator (sklearn.utils.all_estimators), whose walk over scikit-learn's packages imports its
# array-API adapters, and the adapter for torch imports torch itself (measured: 2.2 of the
# 3.1 s that ``import skops.io`` took here, with torch installed for stage 1). No head uses them.
UNNEEDED_ON_IMPORT = tuple(f"sklearn.externals.array_api_compat.{name}" for name in ("torch", "cupy", "dask"))


def skops_io():
    """``skops.io``, imported without the array-API adapters of :data:`UNNEEDED_ON_IMPORT`.

    While it is imported those modules are marked absent (``None`` in ``sys.modules``), so the
    package walk skips them as it skips any package that cannot be imported; the marks are removed
    afterwards, so later code can still import them.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    blocked = [name for name in UNNEEDED_ON_IMPORT if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        import skops.io
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return skops.io


# Every type a saved model may contain beyond those skops trusts by default. Loading refuses a
# file that holds any other (see load_model); a new field of a head with a new type must be added.
TRUSTED_TYPES = (
    "classify.heads.svm.CalibratedSVC",
    "classify.heads.svm.GramRBFSVC",
    "classify.heads.mlp.GroupedMLPClassifier",
    "classify.heads.scaler.RowBlockScaler",
    "classify.heads.knn.KNNClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    # the same types as models written before the heads were one module per family name them
    # (still importable from classify.heads)
    "classify.heads.CalibratedSVC",
    "classify.heads.GramRBFSVC",
    "classify.heads.GroupedMLPClassifier",
    "classify.heads.RowBlockScaler",
)
MODEL_SUFFIX = ".skops"


def model_sidecar(path: Path) -> Path:
    """The JSON file beside a model: its metadata, readable without loading the model."""
    return Path(path).with_suffix(".json")


def save_model(path: Path, bundle: dict) -> None:
    """Saves a head (``bundle["model"]``) with its metadata as a skops file, and a JSON sidecar.

    skops' format stores the objects' state, never code: loading it builds only types on an
    explicit list (:data:`TRUSTED_TYPES` and skops' own defaults), so a replaced file cannot run
    anything. The sidecar repeats the metadata (and the file's SHA-256, which tells a changed
    file from the one this run wrote; it is not what keeps loading safe).
    """
    sio = skops_io()

    data = sio.dumps(bundle)
    atomic_write(path, lambda fh: fh.write(data))
    info = {k: v for k, v in bundle.items() if k != "model"}
    info["sha256"] = hashlib.sha256(data).hexdigest()
    info["format"] = "skops"
    write_json(model_sidecar(path), info)


def read_sidecar(path) -> dict:
    """The JSON object of a model's sidecar.

    Raises:
        DataError: missing, not JSON, or JSON that is not an object.
    """
    side = model_sidecar(path)
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {side} ({err}); it must be the JSON object make compare writes "
                        f"beside {Path(path).name}: run make compare to re-create both") from None
    if not isinstance(info, dict):
        raise DataError(f"{side} holds a JSON {type(info).__name__}, not a JSON object; it must be "
                        f"the object make compare writes beside {Path(path).name}: run make compare "
                        "to re-create both")
    return info


def load_model(path) -> dict:
    """Loads a head saved by :func:`save_model`, building only trusted types.

    Raises:
        DataError: the file or its sidecar is missing or damaged, the file changed since it was
            written, is not a skops file (e.g. a pickle), or holds a type that is not trusted.
    """
    sio = skops_io()

    path = Path(path)
    if not path.is_file() or not model_sidecar(path).is_file():
        raise DataError(f"model {path} (with its sidecar {model_sidecar(path).name}) not found; "
                        "run make compare first")
    expected = read_sidecar(path).get("sha256")
    data = path.read_bytes()  # checked and loaded from the same bytes
    redo = "run make compare to re-create it"
    if expected != hashlib.sha256(data).hexdigest():
        raise DataError(f"refusing to load {path}: its SHA-256 does not match "
                        f"{model_sidecar(path).name}, so it changed after this tool wrote it; {redo}")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DataError(f"refusing to load {path}: it is not a skops model file (a pickle, perhaps; "
                        f"this tool never opens pickles, because they run code when loaded); {redo}")
    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    except Exception as err:  # a damaged or hand-made archive: any parsing error
        raise DataError(f"refusing to load {path}: not a readable skops file ({err}); {redo}") from None
    if untrusted:
        raise DataError(f"refusing to load {path}: it holds untrusted type(s) {', '.join(untrusted)}, "
                        f"which this tool never writes; {redo}")
    try:
        bundle = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as err:
        raise DataError(f"refusing to load {path}: skops cannot load it ({err}); {redo}") from None
    if not isinstance(bundle, dict):
        raise DataError(f"{path} does not hold a saved head (a dict with the model); {redo}")
    return bundle
