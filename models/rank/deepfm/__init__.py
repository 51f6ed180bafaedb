from models.rank.deepfm.model import DeepFM

__all__ = ["DeepFM"]
