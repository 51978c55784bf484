"""HRSA: hierarchical representation similarity analysis (representation, geometry, function).

Each metric is a small pure function (tensors or arrays in, float64 inside, a number or a small
dataclass out) with its invariances in the docstring; nulls, bootstrap and layer sweeps are
layered on top (``stats``, ``cka_stream``). Definitions and pitfalls:
``docs/hrsa-metrics.md``.

Representation level: :func:`dimension_wise_correlation`, :func:`orthogonal_procrustes`
(+ :func:`split_rows`), :func:`inverse_row_entropy`, :func:`random_rotation_entropy_baseline`.
Geometry level: :func:`linear_cka`, :func:`cka_matrix`, :class:`CKAAccumulator`,
:func:`cka_matrix_blocked` (all layer pairs within a memory budget), :func:`knn_jaccard`. Function level: :func:`linear_probe_transfer`, :func:`stratified_split`.
Statistics: :func:`permutation_test`, :func:`cka_permutation_test`; intervals that cover for CKA and k-NN:
:mod:`.intervals` (``cka_jackknife``, ``knn_interval``); :func:`bootstrap_ci` (and the bootstrap CIs below)
duplicate rows, which inflates CKA and k-NN overlap: not for those.
Massive activations: :func:`massive_activation_dims`, :func:`zscore_columns`, :func:`clamp_quantile`.
Fast exact nulls: :func:`cka_bootstrap_ci`, :func:`knn_bootstrap_ci`, :func:`knn_permutation_test`.

Two models end to end (``python -m reasoning_embed.hrsa``): :mod:`.texts` (inputs), :mod:`.features`
(streaming extraction, token sample), :mod:`.analysis` (every metric), :mod:`.figures`, :mod:`.pipeline`
(imported lazily: they pull in transformers and matplotlib); :mod:`.feature_cache` keeps each model's
hidden states on disk between runs.
"""

from .cka import hsic_unbiased, linear_cka, linear_cka_gram
from .cka_blocked import cka_matrix_blocked
from .cka_stream import CKAAccumulator, cka_matrix
from .dimcorr import DimCorrResult, dimension_wise_correlation
from .fast_stats import cka_bootstrap_ci, knn_bootstrap_ci, knn_permutation_test
from .knn import KNNResult, dedupe_rows, knn_indices, knn_jaccard
from .massive import MassiveActivationReport, clamp_quantile, massive_activation_dims, zscore_columns
from .probe import ProbeTransferResult, linear_probe_transfer, stratified_split
from .procrustes import ProcrustesResult, orthogonal_procrustes, procrustes_scores, split_rows
from .rotation_entropy import inverse_row_entropy, random_rotation_entropy_baseline
from .stats import (BootstrapResult, PermutationResult, bootstrap_ci, cka_permutation_test,
                    group_permutations, permutation_p_value, permutation_test)

__all__ = [
    "dimension_wise_correlation", "DimCorrResult",
    "orthogonal_procrustes", "procrustes_scores", "ProcrustesResult", "split_rows",
    "inverse_row_entropy", "random_rotation_entropy_baseline",
    "linear_cka", "linear_cka_gram", "hsic_unbiased", "cka_matrix", "CKAAccumulator", "cka_matrix_blocked",
    "knn_jaccard", "knn_indices", "dedupe_rows", "KNNResult",
    "linear_probe_transfer", "stratified_split", "ProbeTransferResult",
    "bootstrap_ci", "permutation_test", "cka_permutation_test", "group_permutations",
    "permutation_p_value", "BootstrapResult", "PermutationResult",
    "massive_activation_dims", "zscore_columns", "clamp_quantile", "MassiveActivationReport",
    "cka_bootstrap_ci", "knn_bootstrap_ci", "knn_permutation_test",
]
