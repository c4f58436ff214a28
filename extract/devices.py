"""The device a backend runs the model on, named for ``meta.json`` and the log.

A GPU is named as its framework sees it, with its memory (``GPU:0 (NVIDIA H100 80GB HBM3,
80 GiB)``); a CPU by its model and the cores this process may use (``CPU (AMD EPYC 9R14,
2 cores)``). Every backend uses its first GPU by itself when it sees one: TensorFlow and JAX
place work there, Keras on PyTorch picks CUDA when ``torch.cuda.is_available()``
(``KERAS_TORCH_DEVICE`` overrides it).
"""

from __future__ import annotations

import os

from . import machine


def _gib(n_bytes) -> str:
    return f"{n_bytes / 2**30:.0f} GiB" if n_bytes else "memory unknown"


def _smi_memory(index: int = 0) -> str | None:
    """Total memory of NVIDIA GPU ``index`` as its driver reports it (``81559 MiB``), or None."""
    names = machine.gpu_names()
    if index < len(names) and "," in names[index]:
        mib = names[index].rsplit(",", 1)[1].strip().split()[0]
        if mib.isdigit():
            return _gib(int(mib) * 2**20)
    return None


def _tensorflow_gpu() -> str | None:
    from ._tf import tensorflow

    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unknown")
    except Exception:  # details are not available on every platform
        name = "unknown"
    return f"GPU:0 ({name}, {_smi_memory() or 'memory unknown'})"


def _torch_gpu() -> str | None:
    import torch
    from keras.src.backend.torch.core import get_device

    where = str(get_device())
    if where.startswith("cuda"):
        device = torch.device(where)
        props = torch.cuda.get_device_properties(device)
        return f"GPU:{device.index or 0} ({props.name}, {_gib(props.total_memory)})"
    if where != "cpu":
        return f"GPU:{where} (torch {where} device)"
    return None


def _jax_gpu() -> str | None:
    import jax

    first = jax.devices()[0]
    if first.platform == "cpu":
        return None
    return f"GPU:{first.id} ({first.device_kind}, {_smi_memory(first.id) or 'memory unknown'})"


GPU_OF = {"tensorflow": _tensorflow_gpu, "torch": _torch_gpu, "jax": _jax_gpu}


def cpu_name() -> str:
    """``CPU (<model>, <n> cores)``: the CPU model and the cores this process may use."""
    try:
        text = machine.CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model = machine.cpu_identity(text).split(" [", 1)[0]
    return f"CPU ({model}, {machine.usable_cores()} cores)"


def describe(backend: str) -> str:
    """The device ``backend`` runs the model on: its first GPU when it sees one, else the CPU.

    Imports the framework (call it once an image is to be embedded).
    """
    return GPU_OF[backend]() or cpu_name()


def cpu_only_environment() -> dict:
    """Environment variables that hide every GPU from the three backends (for a CPU run)."""
    return {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "KERAS_TORCH_DEVICE": "cpu"}


def hide_gpus() -> None:
    """Hides every GPU from a backend not yet imported in this process (``--device cpu``)."""
    os.environ.update(cpu_only_environment())
