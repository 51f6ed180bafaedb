from models.rank.ffm.model import FFM

__all__ = ["FFM"]
