"""ctrkit: the shared library behind the CTR toolkit's command-line tools and servers.

Data flows one way: data -> (models) -> training -> export -> inference -> serving.
"""
__version__ = "0.1.0"
