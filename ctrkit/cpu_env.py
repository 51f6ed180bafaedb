"""CPU math-library settings for the process, applied by the entry points (not by importing ctrkit).

`configure_cpu_env()` is called first thing by every CLI in tools/, every server's `main` and every benchmark
worker, BEFORE paddle is imported (MKL reads its settings when it loads). It is idempotent and only ever sets
variables the user has not set:

- `MKL_DEBUG_CPU_TYPE=5` on AMD CPUs. Paddle's bundled MKL picks a slow generic code path on AMD processors;
  5 selects the AVX2 kernels (measured on an AMD EPYC: MLP matmul 2.3-2.5x faster, identical outputs). Set it
  yourself to override; an empty value turns it off.

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
