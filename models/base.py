"""Compatibility alias: the model interface lives in `ctrkit.zoo` (import `CTRModel` from there)."""
from ctrkit.zoo import COMMON_HYPER_PARAMETERS, CTRModel

__all__ = ["COMMON_HYPER_PARAMETERS", "CTRModel"]
