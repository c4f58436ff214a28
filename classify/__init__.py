"""Stage 2: classical heads on the cached embeddings, on the CPU, without TensorFlow.

Public API::

    from classify import compare, load_features, load_model
"""

from .compare import compare, load_model
from .data import DataError, Features, load_features
from .heads import HEAD_NAMES, make_heads, select_heads

__all__ = ["DataError", "Features", "HEAD_NAMES", "compare", "load_features", "load_model",
           "make_heads", "select_heads"]
