"""The settings section, folded away: the cache, the extraction, the run's settings, versions."""

from __future__ import annotations

from pathlib import Path

from .markup import details, esc, kv_table

KNOWN = ["heads", "seed", "test_size", "folds", "repeats", "jobs", "split_rule", "n_images", "n_train",
         "n_eval", "seconds", "created"]
SKIP = {"features_key", "features_folder", "extraction", "weights_fallback", "versions", "figures",
        "class_names", "label_conflicts", "more_data"}


def _run_settings(run: dict, meta: dict, features_folder: Path | None) -> list:
    ext = run.get("extraction") or {}
    settings = [
        ("features key", f"<code>{esc(run.get('features_key', ''))}</code>"),
        ("features folder", f"<code>{esc(features_folder or run.get('features_folder', ''))}</code>"),
    ]
    for k in ("backbone", "weights", "image_size", "pooling", "precision", "dim"):
        value = meta.get(k, ext.get(k))
        if value is not None:
            settings.append((k, esc(value)))
    fallback = run.get("weights_fallback") or meta.get("weights_fallback")
    if fallback:
        settings.append(("weights fallback", esc(fallback)))
    # the known settings first, then whatever else run.json records (a later stage 2 may add some)
    for k in KNOWN + sorted(set(run) - set(KNOWN) - SKIP):
        value = run.get(k)
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            value = ", ".join(map(str, value))
        if k in run and not isinstance(value, (dict, list)):
            settings.append((k.replace("_", " "), esc(value)))
    return settings


def section_settings(run: dict, meta: dict, features_folder: Path | None) -> str:
    """Every setting of the run, the last extraction and the versions, in one folded block."""
    extraction = [(k, esc(meta[k])) for k in ("computed", "reused", "rejected", "skipped", "seconds",
                                              "images_per_second", "device") if k in meta]
    versions = dict(meta.get("versions") or {})
    versions.update(run.get("versions") or {})
    right = ""
    if extraction:
        right += "<h3>Last extraction</h3>" + kv_table(extraction)
    if versions:
        right += "<h3>Versions</h3>" + kv_table((k, esc(v)) for k, v in versions.items())
    body = ('<div class="cols"><div><h3>Settings</h3>' + kv_table(_run_settings(run, meta, features_folder))
            + f"</div><div>{right}</div></div>")
    return details("Every setting of the run, the last extraction and the versions", body, cls="settings")
