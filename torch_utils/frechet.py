"""The Frechet distance between two Gaussians, the formula behind FID.

For N(mu1, S1) and N(mu2, S2),

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

EDM takes the trace term from `scipy.linalg.sqrtm(S1 @ S2)`: a Schur decomposition of a
non-symmetric matrix, slow for 2048 features and complex-valued from round-off. The trace only
needs eigenvalues, and S1 S2 has the same eigenvalues as the symmetric positive semi-definite
matrix M = S1^(1/2) S2 S1^(1/2) (similar matrices: S1 S2 = S1^(1/2) M S1^(-1/2) where S1 is
invertible, and by continuity otherwise). So

    tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(M)),

with S1^(1/2) from one symmetric eigendecomposition of S1 and the lambda_i from a second,
eigenvalues only. Both are LAPACK's symmetric solvers, real throughout. Eigenvalues within
round-off of zero (below dim * eps * the largest, including negative ones) are taken as zero:
for covariances of fewer images than features their square roots would otherwise add noise of
order sqrt(eps) to the distance.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

#----------------------------------------------------------------------------
# Eigenvalues of a symmetric positive semi-definite matrix with round-off
# about zero set to zero; the square root of such a matrix, by its
# eigendecomposition S = V diag(w) V^T.

def _clean_eigenvalues(w: np.ndarray) -> np.ndarray:
    tolerance = len(w) * np.finfo(np.float64).eps * np.abs(w).max(initial=0)
    return np.where(w > tolerance, w, 0)

def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    symmetric = (matrix + matrix.T) / 2
    w, v = scipy.linalg.eigh(symmetric, check_finite=False)
    return (v * np.sqrt(_clean_eigenvalues(w))) @ v.T

#----------------------------------------------------------------------------
# tr((S1 S2)^(1/2)) from the eigenvalues of S1^(1/2) S2 S1^(1/2).

def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    root1 = psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    product = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    eigenvalues = scipy.linalg.eigvalsh((product + product.T) / 2, check_finite=False)
    return float(np.sqrt(_clean_eigenvalues(eigenvalues)).sum())

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances symmetric PSD)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    mean_term = float(np.square(mu1 - mu2).sum())
    return mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2)

#----------------------------------------------------------------------------
# EDM's formula, kept as the reference the tests and bench.py compare with:
# the matrix square root of the non-symmetric product, real part of the total.

def frechet_distance_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    root = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    total = np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root)
    return float(np.real(total))

#----------------------------------------------------------------------------
