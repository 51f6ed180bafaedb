from models.rank.dcn.model import DCN

__all__ = ["DCN"]
