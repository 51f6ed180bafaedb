from models.rank.deepfefm.model import DeepFEFM

__all__ = ["DeepFEFM"]
