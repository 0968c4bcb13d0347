"""Utilities: parameter counts and tables."""

from .params import count_parameters, display_parameters

__all__ = ["count_parameters", "display_parameters"]
