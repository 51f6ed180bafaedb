"""ctrkit: the shared library behind the CTR toolkit's command-line tools and servers.

Data flows one way: data -> (models) -> training -> export -> inference -> serving.
"""
__version__ = "0.1.0"

import warnings

# paddle warns on import that ccache (a C++ build cache for custom ops) is missing; it is irrelevant here.
warnings.filterwarnings("ignore", message="No ccache found")
