from models.rank.xdeepfm.model import XDeepFM

__all__ = ["XDeepFM"]
