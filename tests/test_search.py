"""The one search: faiss flat, faiss IVF and torch top-k agree with a brute-force oracle, in numpy and torch."""

import numpy as np
import pytest
import torch

from reasoning_embed.retrieval import Searcher, exact_search, merge_topk


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, x


def _oracle(q, x, k):
    s = q @ x.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize("index", ["flat", "torch", "ivf"])
def test_searcher_matches_brute_force(table, index):
    q, x = table
    s, i = Searcher(x, index, ivf_nprobe=10_000, torch_chunk=8).search(q, 10)
    want_s, want_i = _oracle(q, x, 10)
    assert isinstance(s, np.ndarray) and s.shape == (37, 10)
    np.testing.assert_allclose(s, want_s, atol=1e-5)
    np.testing.assert_array_equal(i, want_i)


@pytest.mark.parametrize("backend", ["faiss", "torch", "auto"])
def test_exact_search_torch_in_torch_out(table, backend):
    q, x = table
    s, i = exact_search(torch.from_numpy(q), torch.from_numpy(x), 7, backend, chunk_size=5)
    want_s, want_i = _oracle(q, x, 7)
    assert i.dtype == torch.long and s.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), want_s, atol=1e-5)
    np.testing.assert_array_equal(i.numpy(), want_i)


def test_k_capped_and_bad_backend(table):
    q, x = table
    assert Searcher(x[:3], "torch").search(q, 10)[1].shape == (37, 3)
    with pytest.raises(ValueError, match="faiss or torch"):
        exact_search(torch.from_numpy(q), torch.from_numpy(x), 3, "annoy")


def test_chunked_corpus_merge_is_exact(table):
    q, x = table
    qt, best = torch.from_numpy(q), None
    for start in range(0, len(x), 128):
        s, i = exact_search(qt, torch.from_numpy(x[start:start + 128]), 10)
        best = merge_topk(best, (s, i + start), 10)
    want_s, want_i = _oracle(q, x, 10)
    np.testing.assert_array_equal(best[1].numpy(), want_i)
