"""Failure discovery: find coherent slices of validation errors in CLIP embedding space.

    modes = FailureDirections()(embeddings, labels, preds, class_names)   # or ErrorClusters(), ErrorNeighbourhoods(),
    modes = discover("directions", embeddings, labels, preds, class_names, min_support=10)

Every method takes L2-normalised CLIP image embeddings [n, d], true and predicted labels [n] and the class names,
and returns `FailureMode`s ranked by score (descending).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from blindspot.discovery.clusters import ErrorClusters
from blindspot.discovery.directions import FailureDirections
from blindspot.discovery.neighbourhoods import ErrorNeighbourhoods
from blindspot.discovery.scoring import binomial_z
from blindspot.discovery.svm import LinearSVMResult, linear_svm
from blindspot.modes import FailureMode

DISCOVERY_METHODS: dict[str, type] = {"directions": FailureDirections, "clusters": ErrorClusters,
                                       "neighbourhoods": ErrorNeighbourhoods}

__all__ = ["DISCOVERY_METHODS", "ErrorClusters", "ErrorNeighbourhoods", "FailureDirections", "LinearSVMResult", "binomial_z", "build",
           "discover", "linear_svm"]


def build(method: str, **knobs: Any) -> FailureDirections | ErrorClusters | ErrorNeighbourhoods:
    """The discovery method registered as `method`, constructed with `knobs`."""
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"unknown discovery method {method!r}; known: {', '.join(sorted(DISCOVERY_METHODS))}")
    return DISCOVERY_METHODS[method](**knobs)


def discover(
    method: str,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    **knobs: Any,
) -> list[FailureMode]:
    """Run the discovery method named `method` (see DISCOVERY_METHODS) and return its ranked failure modes."""
    return build(method, **knobs)(embeddings, labels, preds, class_names)
