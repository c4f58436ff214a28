"""Stage 2: classical heads on the cached embeddings, on the CPU, without TensorFlow.

Public API::

    from classify import compare, load_features, load_model, predict_images
"""

from .compare import compare, load_model
from .data import DataError, Features, load_features
from .heads import HEAD_NAMES, make_heads, select_heads


def __getattr__(name):
    # Imported on first use, so that ``python -m classify.predict`` does not find the module
    # already imported by the package (runpy warns about that).
    if name in ("predict_images", "SettingsMismatch"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataError", "Features", "HEAD_NAMES", "compare", "load_features", "load_model",
           "make_heads", "predict_images", "select_heads", "SettingsMismatch"]
