"""What the CLIs print: one JSON line per result."""
from __future__ import annotations

import json


def format_result(result: dict) -> str:
    """One JSON line (floats rounded for people; NaN becomes null)."""
    def clean(v):
        if isinstance(v, float):
            return None if v != v else round(v, 6)
        return v
    return json.dumps({k: clean(v) for k, v in result.items()})
