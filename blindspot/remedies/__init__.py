"""Remedies: plugins that turn a discovered round into training data or weights (one small contract)."""

from .base import Remedy, RemedyContext, RemedyResult

__all__ = ["Remedy", "RemedyContext", "RemedyResult"]
