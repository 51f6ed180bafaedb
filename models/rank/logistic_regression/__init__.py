from models.rank.logistic_regression.model import LogisticRegression

__all__ = ["LogisticRegression"]
