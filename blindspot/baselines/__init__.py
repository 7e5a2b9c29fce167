"""Baselines Blindspot is compared with, as Lightning-free pieces the thin callbacks call.

- `jtt`: Just Train Twice (Liu et al. 2021): error set of an ERM model -> per-sample loss weights; re-initialisation.
- `groups`: discovered groups (AGRO-style, Paranjape et al. 2023): failure modes -> a group label per sample.
- `dfr`: Deep Feature Reweighting (Kirichenko et al. 2023): group-balanced last-layer retraining.
- `retrieval`: Data-Centric Debugging (Singla et al. 2022): nearest pool images to each failure mode.
"""

from blindspot.baselines.batched import apply_batched
from blindspot.baselines.dfr import DFRResult, balanced_subsample, fit_dfr, penultimate_features, split_halves
from blindspot.baselines.groups import assign_groups, group_names, groups_from_members
from blindspot.baselines.jtt import error_set, reinitialize_, upweight
from blindspot.baselines.retrieval import Retrieved, select_for_modes

__all__ = ["DFRResult", "Retrieved", "apply_batched", "assign_groups", "balanced_subsample", "error_set", "fit_dfr",
           "group_names", "groups_from_members", "penultimate_features", "reinitialize_", "select_for_modes",
           "split_halves", "upweight"]
