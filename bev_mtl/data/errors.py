"""The data layer's error type (its own module so every checker can raise it without import cycles)."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data; the message names the sample, camera and file."""
