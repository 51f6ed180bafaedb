from models.rank.wide_deep.model import WideDeep

__all__ = ["WideDeep"]
