"""ctrkit: the shared library behind the CTR toolkit's command-line tools and servers.

Data flows one way: data -> (models) -> training -> export -> inference -> serving.
"""
import os
import warnings

__version__ = "0.1.0"

# paddle warns on import that ccache (a C++ build cache for custom ops) is missing; it is irrelevant here.
warnings.filterwarnings("ignore", message="No ccache found")


def _use_fast_mkl_path_on_amd() -> None:
    """Paddle's bundled MKL picks a slow generic code path on AMD CPUs; MKL_DEBUG_CPU_TYPE=5 selects the
    AVX2 kernels (measured here, AMD EPYC: MLP matmul 2.5x faster, identical outputs). It must be set before
    paddle loads MKL, so it is set when ctrkit is imported, and only on AMD and when the user has not set it."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            is_amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        return
    if is_amd:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"


_use_fast_mkl_path_on_amd()
