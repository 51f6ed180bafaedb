from models.rank.fm.model import FM

__all__ = ["FM"]
