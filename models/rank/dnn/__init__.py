from models.rank.dnn.model import DNN

__all__ = ["DNN"]
