"""Stage 1: run the backbone once per image and cache pooled embeddings under FEATURES/<input-id>/<key>/.

Public API::

    from extract import Settings, extract_features
    summary = extract_features("in", "features", Settings(weights="none", size=64))

The names are imported on first use, so importing one small module of the package (the image
decoder in a decoding process, say) does not load the rest (pandas among it).
"""

import importlib

_HOMES = {
    "Summary": "assemble", "CacheWriteError": "atomic", "CacheError": "cache",
    "cache_folder": "cache", "input_id": "cache", "open_cache": "cache", "read_cache": "cache",
    "Interrupted": "compute", "embed_files": "embed", "ImageError": "load", "load_image": "load",
    "Settings": "model", "WeightsUnavailable": "model", "BackendUnavailable": "framework",
    "extract_features": "run",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
