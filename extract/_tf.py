"""Import TensorFlow without the C++ start-up chatter (CUDA probes, oneDNN notes) on stderr.

Those lines are printed before TensorFlow reads TF_CPP_MIN_LOG_LEVEL, so the only way to keep
them out of the user's terminal is to point file descriptor 2 elsewhere while importing and
while listing devices. Python exceptions are unaffected: they are raised after it is restored.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def quiet_stderr():
    """Sends the process's stderr (fd 2) to /dev/null for the duration of the block."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def tensorflow():
    """Returns the ``tensorflow`` module, imported quietly, with its device list made."""
    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
