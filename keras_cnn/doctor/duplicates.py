"""Exact and near-duplicates, and leakage: a copy of an image in another part.

- Exact duplicates share the SHA-1 of their bytes (the split key's source).
- Near-duplicates (re-encoded, resized, slightly cropped or brightened copies) are found in
  two steps.  Candidates: each image's nearest neighbours by perceptual hash (the DCT hash:
  the signs of the 8x8 lowest frequencies of a 32x32 grey thumbnail against their median,
  64 bits compared by Hamming distance) and by feature vector.  Verification: the grey
  thumbnails of a candidate pair are compared pixel by pixel after the best of a few small
  alignments (scale 31/32..32/31, half-pixel shifts: what a slight crop or resize does),
  once standardised (mean 0, deviation 1: contrast and brightness offsets do not count)
  and once rank-normalised (any monotonic brightness curve, clipping included, does not
  count).  A pair is a near-duplicate when either mean difference is tiny.  The check is
  on pixels, so it means the same whatever the features (a random base included), and it
  tells a copy from a merely similar image of the same class, which feature distance alone
  cannot on small, similar pictures.
- A pair whose members sit in different parts is leakage, reported first.

Memory stays linear: neighbours come from :mod:`keras_cnn.doctor.neighbours`, and pairs are
verified in blocks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from keras_cnn.doctor.findings import empty_findings, finding_rows, ordered_findings
from keras_cnn.doctor.neighbours import nearest_neighbours
from keras_cnn.doctor.thumbnails import is_flat

HASH_SIDE = 8                 # 8x8 frequencies: 64 bits
HASH_NEIGHBOURS = 5
FEATURE_NEIGHBOURS = 5
# Candidates differing in more hash bits are not verified: a slight change moves a few bits
# (the planted copies of the test set moved at most 12), unrelated pictures about 32.
HASH_CANDIDATE_LIMIT = 20
# Mean absolute difference of the standardised / rank-normalised thumbnails (inner 28x28)
# under which a pair is a near-duplicate.  On scikit-learn's digits (8x8 scans of similar
# handwriting, blown up: the hardest case) copies stayed below 0.040 / 0.010 and distinct
# images above 0.055 / 0.017.
PIXEL_LIMIT = 0.045
RANK_LIMIT = 0.013
SEARCH_FACTOR = 7
_BORDER = 2                   # pixels of the thumbnail edge left out (alignment fills them in)
_BLOCK = 2048                 # pairs verified at once
PART_ORDER = {"train": 0, "validation": 1, "test": 2}


def perceptual_hashes(grey_thumbnails: np.ndarray) -> np.ndarray:
    """The DCT perceptual hash of each 32x32 grey thumbnail, as a bool array (n, 64).

    The same construction as ``imagehash.phash``: 2-D DCT-II, the 8x8 lowest frequencies,
    each bit = coefficient above their median.
    """
    from scipy.fft import dct

    frequencies = dct(dct(np.asarray(grey_thumbnails, dtype=np.float64), axis=1), axis=2)
    lowest = frequencies[:, :HASH_SIDE, :HASH_SIDE].reshape(len(grey_thumbnails), -1)
    return lowest > np.median(lowest, axis=1, keepdims=True)


def hash_distances(hashes: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Hamming distance (bits) between the hashes of each pair."""
    return (hashes[first] != hashes[second]).sum(axis=1)


def candidate_pairs(hashes: np.ndarray, feature_neighbours: np.ndarray | None) -> np.ndarray:
    """Unordered pairs (m, 2), first < second, of images near in hash or in feature space."""
    _distances, hash_neighbours = nearest_neighbours(hashes.astype(np.float32), HASH_NEIGHBOURS)
    sources = [hash_neighbours]
    if feature_neighbours is not None:
        sources.append(feature_neighbours[:, :FEATURE_NEIGHBOURS])
    pairs = []
    for neighbours in sources:
        rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
        pairs.append(np.stack([rows, neighbours.ravel()], axis=1))
    pairs = np.sort(np.concatenate(pairs), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def _interpolation(side: int, scale: float, shift: float) -> np.ndarray:
    """(side - 2·border, side) matrix resampling one axis, scaled about the centre and shifted
    (linear interpolation, edges clamped); only the inner rows the comparison uses."""
    centre = (side - 1) / 2
    source = np.clip((np.arange(_BORDER, side - _BORDER) - centre) / scale + centre + shift, 0, side - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, side - 1)
    weight = (source - lower).astype(np.float32)
    matrix = np.zeros((len(source), side), dtype=np.float32)
    rows = np.arange(len(source))
    np.add.at(matrix, (rows, lower), 1 - weight)
    np.add.at(matrix, (rows, upper), weight)
    return matrix


_IDENTITY = 4   # position of (scale 1, no shift) in _alignments


def _alignments(side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, columns) resampling matrices of each small scale and shift: a scale and shift act on
    each axis alone, so moving a batch of images is two small matrix products."""
    return [(_interpolation(side, scale, shift_y), _interpolation(side, scale, shift_x))
            for scale in (1.0, side / (side - 1), (side - 1) / side)
            for shift_y in (-0.5, 0.0, 0.5) for shift_x in (-0.5, 0.0, 0.5)]


def _warp(images: np.ndarray, alignment: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Images (n, side, side) moved by ``alignment``, inner part only, flattened (n, inner²)."""
    rows, columns = alignment
    moved = rows @ images @ columns.T
    return moved.reshape(len(images), -1)


def _standardised(images: np.ndarray) -> np.ndarray:
    centred = images - images.mean(axis=1, keepdims=True)
    deviation = centred.std(axis=1, keepdims=True)
    return centred / np.where(deviation > 0, deviation, 1.0)


def _ranks(images: np.ndarray) -> np.ndarray:
    """Each pixel's rank within its image, 0..1, ties sharing their mean rank; same shape.

    Grey levels are whole numbers 0..255, so a histogram per image gives every rank at
    once (a sort per image costs ten times as much).
    """
    flat = np.clip(np.rint(images.reshape(len(images), -1)), 0, 255).astype(np.int64)
    count, size = flat.shape
    offsets = flat + 256 * np.arange(count)[:, None]
    histogram = np.bincount(offsets.ravel(), minlength=256 * count).reshape(count, 256)
    below = np.cumsum(histogram, axis=1) - histogram
    ranks = below.ravel()[offsets] + (histogram.ravel()[offsets] + 1) / 2
    return (ranks / size).astype(np.float32).reshape(images.shape)


def alignment_differences(grey_thumbnails: np.ndarray, pairs: np.ndarray,
                          search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each pair: the smallest mean |difference| of standardised and of rank-normalised thumbnails
    over the alignments (see the module docstring), on the inner part of the thumbnail.

    ``search=False`` compares them as they are (scale 1, no shift) only.
    """
    thumbnails = np.asarray(grey_thumbnails, dtype=np.float32)
    alignments = _alignments(thumbnails.shape[1])
    identity = alignments[_IDENTITY]
    if not search:
        alignments = [identity]
    ranked = _ranks(thumbnails)
    pixel = np.full(len(pairs), np.inf, dtype=np.float32)
    rank = np.full(len(pairs), np.inf, dtype=np.float32)
    for start in range(0, len(pairs), _BLOCK):
        block = slice(start, start + _BLOCK)
        first, second = thumbnails[pairs[block, 0]], thumbnails[pairs[block, 1]]
        first_standard = _standardised(_warp(first, identity))
        first_rank = _warp(ranked[pairs[block, 0]], identity)
        second_rank = ranked[pairs[block, 1]]
        for alignment in alignments:
            moved = _standardised(_warp(second, alignment))
            pixel[block] = np.minimum(pixel[block], np.abs(first_standard - moved).mean(axis=1))
            moved_rank = _warp(second_rank, alignment)
            rank[block] = np.minimum(rank[block], np.abs(first_rank - moved_rank).mean(axis=1))
    return pixel, rank


def near_duplicate_pairs(grey_thumbnails: np.ndarray, hashes: np.ndarray,
                         feature_neighbours: np.ndarray | None, same_content: np.ndarray) -> pd.DataFrame:
    """Verified near-duplicate pairs: columns first, second (positions), score, detail.

    ``same_content``: each image's content id (its SHA-1); pairs of identical files are
    left to the exact check.
    """
    pairs = candidate_pairs(hashes, feature_neighbours)
    if len(pairs):
        pairs = pairs[same_content[pairs[:, 0]] != same_content[pairs[:, 1]]]
        bits = hash_distances(hashes, pairs[:, 0], pairs[:, 1])
        flat = is_flat(grey_thumbnails)  # blank frames look alike whatever they show
        keep = (bits <= HASH_CANDIDATE_LIMIT) & ~flat[pairs[:, 0]] & ~flat[pairs[:, 1]]
        pairs, bits = pairs[keep], bits[keep]
    if not len(pairs):
        return pd.DataFrame({"first": [], "second": [], "score": [], "detail": []})
    # Compared as they are first; only pairs close enough that an alignment could bring them
    # under a limit are searched (a 1-pixel crop of a 32-pixel picture left about 5 times
    # the limits unaligned).
    pixel, rank = alignment_differences(grey_thumbnails, pairs, search=False)
    close = (pixel <= SEARCH_FACTOR * PIXEL_LIMIT) & (rank <= SEARCH_FACTOR * RANK_LIMIT)
    if close.any():
        pixel[close], rank[close] = alignment_differences(grey_thumbnails, pairs[close])
    near = (pixel <= PIXEL_LIMIT) | (rank <= RANK_LIMIT)
    # 1 for identical thumbnails, 0.5 at a limit.
    scores = np.clip(np.maximum(1 - pixel / (2 * PIXEL_LIMIT), 1 - rank / (2 * RANK_LIMIT)), 0, 1)
    details = [f"pixel difference {pixel[row]:.3f}, brightness-free {rank[row]:.3f}, hash distance {bits[row]}"
               for row in np.flatnonzero(near)]
    return pd.DataFrame({"first": pairs[near, 0], "second": pairs[near, 1], "score": scores[near],
                         "detail": details})


def exact_duplicate_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Pairs of identical files (same SHA-1): each later copy with the first; columns first, second, score, detail."""
    digests = table["sha1"].to_numpy(dtype=object)
    known = digests != ""
    repeated = pd.Series(digests[known], index=np.flatnonzero(known))
    repeated = repeated[repeated.duplicated(keep=False)]
    rows = []
    for _digest, group in repeated.groupby(repeated, sort=False):
        positions = group.index.to_list()
        for other in positions[1:]:
            first_label, other_label = table["value"].iat[positions[0]], table["value"].iat[other]
            detail = ("identical bytes" if first_label == other_label
                      else f"identical bytes under two labels ({first_label} / {other_label})")
            rows.append((positions[0], other, 1.0, detail))
    return pd.DataFrame(rows, columns=["first", "second", "score", "detail"])


def pair_findings(table: pd.DataFrame, pairs: pd.DataFrame, same_part_issue: str) -> pd.DataFrame:
    """issues.csv rows for ``pairs``: ``leakage`` across parts, else ``same_part_issue``.

    In a leakage row the member in the later part (test, then validation) is the objectId,
    so it is the one exclude.txt leaves out; in a same-part row it is the later of the two.
    """
    if not len(pairs):
        return empty_findings()
    parts = table["type"].map(PART_ORDER).fillna(0).to_numpy()
    first, second = pairs["first"].to_numpy(dtype=np.int64), pairs["second"].to_numpy(dtype=np.int64)
    crossing = parts[first] != parts[second]
    later_part_first = crossing & (parts[first] > parts[second])
    subject = np.where(later_part_first, first, np.maximum(first, second))
    other = np.where(later_part_first, second, np.where(subject == first, second, first))
    details = pairs["detail"].tolist()
    frames = []
    for issue, rows in (("leakage", np.flatnonzero(crossing)), (same_part_issue, np.flatnonzero(~crossing))):
        frames.append(finding_rows(issue, table, subject[rows], pairs["score"].to_numpy()[rows],
                                   others=other[rows], details=[details[row] for row in rows]))
    return ordered_findings(frames)
