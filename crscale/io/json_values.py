"""The one conversion of nested values to what strict JSON holds (archive attributes, reports, stats)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that strict JSON can hold.

    Mappings (keys made strings), lists and tuples are converted item by item; numpy arrays
    become lists and numpy scalars Python ones; NaN and infinities become None.

    Parameters
    ----------
    value : Any
        Nested dicts, lists, tuples, numpy arrays and scalars, or plain values.

    Returns
    -------
    Any
        The same structure in plain Python types.
    """
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
