"""The classifier heads, as data: name -> scikit-learn pipeline behind a standardisation.

One module per family (:mod:`.linear` logreg, :mod:`.svm`, :mod:`.mlp`, :mod:`.knn`), each with its
estimator, the grid ``TUNE`` searches and its fixed settings; :mod:`.registry` names them
(``HEADS``); :mod:`.fitting` fits and reads any of them; :mod:`.folds`, :mod:`.kernels` and
:mod:`.scaler` are what they share. Every name is importable from ``classify.heads``.
"""

from .fitting import (decision_values, fit_head, format_settings, groups_params, labels_of, outputs,
                      scores, set_inner, settings_of)
from .folds import INNER_FOLDS, CopyAwareFolds, copy_aware_folds, identical_rows
from .kernels import (BLOCK_ENTRIES, BLOCK_ROWS, WORKSPACE, KernelBuffers, Workspace, rbf_gram64, rbf_kernel32,
                      squared_distances, variance)
from .knn import KNNClassifier, check_normalize, normalize_vectors
from .mlp import EARLY_STOPPING_FROM, HALVING_FROM, GroupedMLPClassifier
from .registry import FIXED, GRIDS, HEAD_NAMES, candidates, fixed_head, make_heads, searched_grid, select_heads
from .scaler import RowBlockScaler
from .svm import CalibratedSVC, GramRBFSVC, platt_sigmoid

__all__ = [
    "BLOCK_ENTRIES", "BLOCK_ROWS", "EARLY_STOPPING_FROM", "FIXED", "GRIDS", "HALVING_FROM", "HEAD_NAMES",
    "INNER_FOLDS", "KNNClassifier", "CalibratedSVC", "CopyAwareFolds", "GramRBFSVC", "GroupedMLPClassifier", "KernelBuffers",
    "RowBlockScaler", "candidates", "check_normalize", "copy_aware_folds", "decision_values", "fit_head", "fixed_head",
    "format_settings", "groups_params", "identical_rows", "labels_of", "make_heads", "normalize_vectors", "outputs",
    "platt_sigmoid", "rbf_gram64", "rbf_kernel32", "scores", "searched_grid", "select_heads", "set_inner", "settings_of",
    "squared_distances", "variance", "WORKSPACE", "Workspace",
]
