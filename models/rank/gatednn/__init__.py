from models.rank.gatednn.model import GateDNN

__all__ = ["GateDNN"]
