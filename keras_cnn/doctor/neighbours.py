"""Exact k-nearest-neighbour search that never holds an n x n matrix.

Rows are compared a block at a time: one matrix product gives a block's squared
Euclidean distances to every row (|a|² + |b|² - 2a·b), ``argpartition`` keeps each row's k
smallest, whose distances are then computed again directly (the product form loses
precision for close pairs), and the block is dropped.  Memory grows with n·k plus one block (at most
``BLOCK_ELEMENTS`` distances), not with n²; time is the matrix products', which BLAS runs
near the machine's peak (``benchmarks/doctor.py``: 1.6x as fast here as scikit-learn's
brute-force ``NearestNeighbors``, which takes the same blocked approach with its own
kernels; 100,000 vectors of 1,280 dimensions in about 4 minutes and 1.5 GiB on 2 cores).  Exact search needs no index to tune, and on a CPU it costs far less than the
feature extraction that precedes it.
"""

from __future__ import annotations

import numpy as np

# Distances held at once (float32), plus argpartition's int64 positions of the same count:
# 32 M elements is about 384 MiB at the peak.
BLOCK_ELEMENTS = 32 * 1024 * 1024


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32; zero rows stay zero): Euclidean distance then orders like cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and positions (n, k) of each row's k nearest other rows, nearest first.

    Euclidean distance, exact (float32 arithmetic).  A row is never its own neighbour, even
    when another row is identical to it (both are then at distance 0).  With fewer than
    k + 1 rows, k shrinks.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    k = min(int(k), count - 1)
    distances = np.zeros((count, max(k, 0)), dtype=np.float32)
    positions = np.zeros((count, max(k, 0)), dtype=np.int64)
    if k < 1:
        return distances, positions
    squares = np.einsum("ij,ij->i", vectors, vectors)
    block = max(1, min(BLOCK_ELEMENTS // count, BLOCK_ELEMENTS // (k * vectors.shape[1] or 1)))
    for start in range(0, count, block):
        stop = min(start + block, count)
        squared = vectors[start:stop] @ vectors.T
        squared *= -2
        squared += squares[start:stop, None]
        squared += squares[None, :]
        squared[np.arange(stop - start), np.arange(start, stop)] = np.inf  # never a row's own neighbour
        nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
        del squared
        exact = np.linalg.norm(vectors[start:stop, None, :] - vectors[nearest], axis=2)
        order = np.argsort(exact, axis=1, kind="stable")
        positions[start:stop] = np.take_along_axis(nearest, order, axis=1)
        distances[start:stop] = np.take_along_axis(exact, order, axis=1)
    return distances, positions
