from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from finecut.soft.eigen import smallest_eigenvectors
from finecut.soft.laplacian import laplacian


def _grid_laplacian(h: int, w: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    idx = np.arange(h * w).reshape(h, w)
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    vals = rng.uniform(0.1, 1.0, len(rows))
    w_ = sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))
    return laplacian(w_ + w_.T)


def test_dense_and_sparse_paths_agree() -> None:
    lap = _grid_laplacian(12, 15)
    v_dense, x_dense = smallest_eigenvectors(lap, 8, dense_max=10_000)
    v_sparse, x_sparse = smallest_eigenvectors(lap, 8, dense_max=10)
    np.testing.assert_allclose(v_dense, v_sparse, atol=1e-8)
    assert v_dense[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(v_dense) >= 0)
    # same subspace (eigenvalues here are distinct): |cos| = 1 column by column
    cos = np.abs((x_dense * x_sparse).sum(0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    np.testing.assert_allclose(x_dense.T @ x_dense, np.eye(8), atol=1e-9)
    # first eigenvector of a connected graph is constant
    assert np.ptp(x_dense[:, 0]) < 1e-8


def test_generalised_problem_with_mass() -> None:
    lap = _grid_laplacian(6, 7, seed=1)
    mass = np.random.default_rng(3).uniform(1.0, 50.0, 42)
    values, vectors = smallest_eigenvectors(lap, 5, mass=mass)
    np.testing.assert_allclose(vectors.T @ (mass[:, None] * vectors), np.eye(5), atol=1e-9)
    np.testing.assert_allclose(vectors.T @ lap @ vectors, np.diag(values), atol=1e-9)
    residual = lap @ vectors - mass[:, None] * vectors * values
    assert np.abs(residual).max() < 1e-8
    sparse_values, _ = smallest_eigenvectors(lap, 5, mass=mass, dense_max=1)
    np.testing.assert_allclose(values, sparse_values, atol=1e-8)


def test_k_is_clamped_and_inputs_checked() -> None:
    lap = _grid_laplacian(2, 3)
    values, vectors = smallest_eigenvectors(lap, 100)
    assert values.shape == (6,) and vectors.shape == (6, 6)
    with pytest.raises(ValueError, match="mass"):
        smallest_eigenvectors(lap, 2, mass=np.zeros(6))
