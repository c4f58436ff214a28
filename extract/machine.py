"""This machine as far as the speed of a precision goes, named without importing any framework.

``PRECISION=auto`` remembers its choice per machine. What changes the answer: the CPU model and
the instruction sets that run reduced precisions natively (AVX-512 BF16 made bf16 1.95x fp32 on
a Zen 4 EPYC; without AMX an Intel Xeon ran it at 0.58x), the cores the process may use, the GPU
(named by its driver), and the framework's version (read from its package metadata). Reading
them takes milliseconds, so a run with nothing to compute never loads TensorFlow to ask.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# Flags of /proc/cpuinfo that decide how fast fp32, bf16 and fp16 run: x86 (AVX2/FMA, AVX-512,
# its BF16 and FP16 extensions, AMX tiles) and ARM (SVE, BF16, half-precision arithmetic).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_fp16", "asimdhp", "fphp", "sve", "sve2", "bf16", "sme")

# Distributions that provide each framework, in the order they are looked for.
FRAMEWORKS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
              "jax": ("jax",), "torch": ("torch",)}


def cpu_identity(cpuinfo: str) -> str:
    """The CPU model and its speed flags, from the text of ``/proc/cpuinfo``.

    Args:
        cpuinfo: the file's text (its first processor is read).

    Returns:
        e.g. ``AMD EPYC 9R14 96-Core Processor [avx2 avx512_bf16 avx512f fma]``; the model falls
        back to the platform's processor name when the text has none (ARM lists no model name).
    """
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "model name" and not model:
            model = value.strip()
        elif name in ("flags", "features") and not flags:
            flags = set(value.split())
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    found = sorted(flags.intersection(SPEED_FLAGS))
    return f"{model} [{' '.join(found)}]" if found else model


def gpu_names() -> list[str]:
    """Name and memory of each NVIDIA GPU, as its driver's ``nvidia-smi`` reports them; [] without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def framework_version(name: str = "tensorflow") -> str:
    """``<framework> <version>`` from the installed package's metadata (nothing imported)."""
    for dist in FRAMEWORKS.get(name, (name,)):
        try:
            return f"{name} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{name} (not installed)"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_id(framework: str = "tensorflow") -> str:
    """The machine as ``PRECISION=auto`` remembers it: CPU and flags, cores, GPUs, framework.

    e.g. ``AMD EPYC 9R14 96-Core Processor [avx2 avx512_bf16 avx512f fma] | 2 cores | no NVIDIA
    GPU | tensorflow 2.21.0 | keras 3.15.1``.
    """
    try:
        cpu = cpu_identity(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        cpu = cpu_identity("")
    gpus = "; ".join(gpu_names()) or "no NVIDIA GPU"
    keras = framework_version("keras")
    return " | ".join([cpu, f"{usable_cores()} cores", gpus, framework_version(framework), keras])
