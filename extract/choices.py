"""``FEATURES/.precision.json``: the precisions ``PRECISION=auto`` chose, per machine and setting.

The file maps a machine (see :mod:`extract.machine`) to its settings, and a setting to the
calibration that chose its precision::

    {"<machine>": {"<setting> batch <BATCH>": {"chosen": "bf16", "images_per_second": ...}}}

It follows the cache's rules: written whole under a temporary name and renamed (never half
written), updated under a lock (two runs do not drop each other's entries), and read entry by
entry: an entry that is not an object with a known ``chosen`` precision is ignored with a warning
naming the file, and its setting is calibrated again. A file that cannot be read at all is kept
aside under another name, never silently replaced, and a new one is started. Failing to write it
(a full disk) is a warning: the choice holds for this run, and the next one calibrates again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import CacheWriteError, write_json
from .locks import holding
from .model import PRECISIONS

MEMORY_FILE = ".precision.json"


class Damaged(ValueError):
    """The file is not a JSON object."""


def memory_path(features) -> Path:
    """``FEATURES/.precision.json``."""
    return Path(features) / MEMORY_FILE


def problem(entry) -> str | None:
    """Why a remembered entry cannot be used, or None when it can."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    if "chosen" not in entry:
        return "no 'chosen' precision"
    if entry["chosen"] not in PRECISIONS:
        return f"'chosen' is {entry['chosen']!r}, not one of {', '.join(PRECISIONS)}"
    return None


def _read(path: Path) -> dict:
    """The file's object; {} when there is no file.

    Raises:
        Damaged: the file cannot be read as a JSON object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise Damaged(str(err)) from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise Damaged(f"not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise Damaged(f"a JSON {type(data).__name__}, not an object")
    return data


def recall(features, machine: str, setting: str, log=print) -> dict | None:
    """The usable remembered choice of ``setting`` on ``machine``, or None (with a warning when
    there was an entry that cannot be used)."""
    path = memory_path(features)
    try:
        data = _read(path)
    except Damaged as err:
        log(f"warning: {path} cannot be read ({err}); calibrating again")
        return None
    entries = data.get(machine)
    if entries is None:
        return None
    if isinstance(entries, dict):
        entry = entries.get(setting)
        if entry is None:
            return None
        why = problem(entry)
        if why is None:
            return entry
    else:
        why = f"this machine's entry is a JSON {type(entries).__name__}, not an object"
    log(f"warning: ignoring the PRECISION=auto entry of {setting} for this machine in {path} "
        f"({why}); calibrating again")
    return None


def remember(features, machine: str, setting: str, info: dict, log=print) -> None:
    """Adds ``info`` as the choice of ``setting`` on ``machine``, keeping every other entry.

    Never raises for the file: a failure to write it is logged as a warning.
    """
    path = memory_path(features)
    try:
        with holding(path.with_name(MEMORY_FILE + ".lock"),
                     f"waiting for another run to update {path}", log=log):
            data = _read_or_set_aside(path, log)
            entries = data.get(machine)
            data[machine] = dict(entries) if isinstance(entries, dict) else {}
            data[machine][setting] = info
            write_json(path, data)
    except (OSError, CacheWriteError) as err:
        reason = getattr(err, "strerror", None) or getattr(err, "reason", None) or str(err)
        log(f"warning: could not remember the PRECISION=auto choice in {path} ({reason}); it holds "
            "for this run, and the next run calibrates again")


def _read_or_set_aside(path: Path, log) -> dict:
    """The file's object; a file that cannot be read is renamed aside (and said so), giving {}."""
    try:
        return _read(path)
    except Damaged as err:
        aside = path.with_name(MEMORY_FILE + ".damaged")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{MEMORY_FILE}.damaged-{n}")
        os.replace(path, aside)
        log(f"warning: {path} could not be read ({err}); it is kept as {aside} (its entries are "
            "lost to PRECISION=auto) and a new one is started")
        return {}


def choices_for(features, setting: str) -> set[str]:
    """Every usable precision remembered for ``setting`` (any machine, any BATCH), for stage 2."""
    try:
        data = _read(memory_path(features))
    except Damaged:
        return set()
    found = set()
    for entries in data.values():
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if (name == setting or name.startswith(f"{setting} batch ")) and problem(entry) is None:
                found.add(entry["chosen"])
    return found
