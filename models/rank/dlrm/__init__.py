from models.rank.dlrm.model import DLRM

__all__ = ["DLRM"]
