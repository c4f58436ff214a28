"""OS file locks: one per cache key while a run writes it, one for the remembered precisions.

An OS lock is released when its process dies, even after ``kill -9``, so no stale lock is ever
left to clear by hand.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from .atomic import write_failure


@contextlib.contextmanager
def locked(root: Path, key: str, log=print):
    """Holds ``<input-id>/.locks/<key>.lock`` for the block; waits (saying so) while another run holds it.

    Raises:
        CacheWriteError: the lock cannot be created (a read-only or full ``FEATURES``).
    """
    message = (f"another extraction is writing {Path(root) / key}; waiting for it to finish "
               "(Ctrl-C to stop waiting)")
    with holding(Path(root) / ".locks" / f"{key}.lock", message, log=log, where=root):
        yield


@contextlib.contextmanager
def holding(path: Path, waiting_message: str, log=print, where=None):
    """Holds the OS lock file ``path`` for the block, creating its folder.

    Args:
        path: the lock file.
        waiting_message: logged once when another process holds it and this one waits.
        where: the folder named when the lock cannot be created (default: the lock's folder).

    Raises:
        CacheWriteError: the lock file cannot be created.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        log(waiting_message)
        sys.stdout.flush()
        lock.acquire()
    except OSError as err:
        raise write_failure(where if where is not None else path.parent, err) from None
    try:
        yield
    finally:
        lock.release()
