"""CPU math-library settings for the process, applied by the entry points (not by importing ctrkit).

`configure_cpu_env()` is called first thing by every CLI in tools/, every server's `main` and every benchmark
worker, BEFORE paddle is imported (MKL reads its settings when it loads). It is idempotent and only ever sets
variables the user has not set:

- `MKL_DEBUG_CPU_TYPE=5` on AMD CPUs. Paddle's bundled MKL picks a slow generic code path on AMD processors;
  5 selects the AVX2 kernels (measured on an AMD EPYC: MLP matmul 2.3-2.5x faster, identical outputs). Set it
  yourself to override; an empty value turns it off.

`keep_freed_memory()` is called by the processes that predict batch after batch from text (`paddle_infer.py`, its
worker processes, the upload service): it sets glibc malloc's trim and mmap thresholds so that memory freed after a
batch stays in the process for the next one. With glibc's defaults every prediction gave its scratch memory back to
the kernel and faulted it in again (80 lines: ~50 page faults per call, ~70 in a server's request thread; a
2048-line chunk: ~1,300), measured 0.1-0.3 ms of an 80-line request and ~8% of a 2048-line chunk on the 2-core
machine. The process keeps its high-water mark instead (bounded by the largest batch, not by the input).

Library code that merely imports ctrkit (a notebook, a test) gets no environment change; call
`configure_cpu_env()` yourself there if you want the fast path.
"""
from __future__ import annotations

import os
import sys


def is_amd_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        return False


def configure_cpu_env(environ: dict | None = None) -> dict[str, str]:
    """Apply the CPU settings to `environ` (default os.environ); returns what it set (empty when nothing)."""
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    if "MKL_DEBUG_CPU_TYPE" not in env and is_amd_cpu():
        env["MKL_DEBUG_CPU_TYPE"] = changed["MKL_DEBUG_CPU_TYPE"] = "5"
    if changed and env is os.environ and "paddle" in sys.modules:
        import warnings

        warnings.warn("configure_cpu_env() called after paddle was imported: MKL may not see "
                      f"{sorted(changed)}; call it before importing paddle", RuntimeWarning, stacklevel=2)
    return changed


# glibc mallopt: free memory at the top of a heap is handed back to the kernel only beyond TRIM_THRESHOLD, and
# allocations up to MMAP_THRESHOLD come from the heap (glibc's defaults: 128 KiB, raised as mmapped blocks are
# freed; fixing the trim threshold turns that raising off, hence both)
MALLOC_TRIM_THRESHOLD = 64 << 20
MALLOC_MMAP_THRESHOLD = 32 << 20


def keep_freed_memory() -> bool:
    """Keep memory freed after a batch for the next one instead of returning it to the kernel (see the module
    docstring). True when set; False where malloc is not glibc's, or where MALLOC_TRIM_THRESHOLD_ or
    MALLOC_MMAP_THRESHOLD_ is set in the environment (the user's choice, which glibc has already applied)."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version  # (glibc's alone has the latter)
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)) and bool(mallopt(m_mmap_threshold,
                                                                                  MALLOC_MMAP_THRESHOLD))
