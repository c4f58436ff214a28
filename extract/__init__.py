"""Stage 1: run the backbone once per image and cache pooled embeddings under FEATURES/<input-id>/<key>/.

Public API::

    from extract import Settings, extract_features
    summary = extract_features("in", "features", Settings(weights="none", size=64))
"""

from .assemble import Summary
from .atomic import CacheWriteError
from .cache import CacheError, cache_folder, input_id, open_cache, read_cache
from .compute import Interrupted
from .embed import embed_files
from .load import ImageError, load_image
from .model import Settings, WeightsUnavailable
from .run import extract_features

__all__ = [
    "CacheError", "CacheWriteError", "ImageError", "Interrupted", "Settings", "Summary", "WeightsUnavailable",
    "cache_folder", "embed_files", "extract_features", "input_id", "load_image", "open_cache",
    "read_cache",
]
