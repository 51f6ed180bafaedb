from models.rank.dcn_v2.model import DCNV2

__all__ = ["DCNV2"]
