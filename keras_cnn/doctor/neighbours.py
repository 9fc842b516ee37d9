"""Exact k-nearest-neighbour search that never holds an n x n matrix.

scikit-learn's brute-force ``NearestNeighbors.kneighbors`` computes distances a block of
rows at a time and keeps only each row's k best (its pairwise-distances reduction, in
parallel C code), so memory grows with n·k plus one block, not with n².  Exact search is
fast enough here (``benchmarks/doctor.py``: 100,000 vectors of 1,280 dimensions on 2
cores) and needs no index to tune, unlike approximate libraries.
"""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32; zero rows stay zero): Euclidean distance then orders like cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and positions (n, k) of each row's k nearest other rows, nearest first.

    Euclidean distance, exact.  A row is never its own neighbour, even when another row is
    identical to it (then both are at distance 0).  With fewer than k + 1 rows, k shrinks.
    """
    from sklearn.neighbors import NearestNeighbors

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    k = min(int(k), count - 1)
    if k < 1:
        return np.zeros((count, 0), dtype=np.float32), np.zeros((count, 0), dtype=np.int64)
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(vectors)
    distances, positions = search.kneighbors(vectors)
    # Drop each row's own entry; where ties put it outside the k + 1 found, drop the farthest instead.
    is_self = positions == np.arange(count)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(distances, keep, axis=1).astype(np.float32),
            np.take_along_axis(positions, keep, axis=1))
