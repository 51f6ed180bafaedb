"""ctrkit: the shared library behind the CTR toolkit's command-line tools and servers.

Data flows one way: data -> (models) -> training -> export -> inference -> serving. Prediction from an exported
model in one call: `ctrkit.api.predict(model_dir, lines_or_arrays)`.

Importing ctrkit changes nothing in the process environment: the CPU settings (MKL_DEBUG_CPU_TYPE=5 on AMD CPUs,
for Paddle's bundled MKL) are applied by the entry points -- every tool, server, console script, benchmark worker
and `ctrkit.api.load` -- through `ctrkit.cpu_env.configure_cpu_env()`, before paddle is imported. Call it yourself
first thing in a script of your own that uses paddle directly.
"""
import warnings

__version__ = "0.1.0"

# paddle warns on import that ccache (a C++ build cache for custom ops) is missing; it is irrelevant here.
warnings.filterwarnings("ignore", message="No ccache found")
