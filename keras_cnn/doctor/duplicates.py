"""Exact and near-duplicates, and leakage: a copy of an image in another part.

- Exact duplicates share the SHA-1 of their bytes (the split key's source).
- Near-duplicates (re-encoded, resized, slightly cropped or brightened copies) are found in
  two steps.  Candidates: each image's nearest neighbours by perceptual hash (the DCT hash:
  the signs of the 8x8 lowest frequencies of a 32x32 grey thumbnail against their median,
  64 bits compared by Hamming distance) and by feature vector.  Verification: the grey
  thumbnails of a candidate pair, lightly blurred (a copy resampled anew carries new
  noise), are compared pixel by pixel after the alignment (a scale and a shift per axis:
  what a slight crop or resize does) that brings them closest, once standardised (mean
  0, deviation 1: contrast and brightness offsets do not count) and once rank-normalised
  (any monotonic brightness curve, clipping included, does not count).  A pair is a
  near-duplicate when either mean difference is under its limit: a fixed one, raised (up
  to 3x) on a set whose distinct look-alikes differ more than the digits' do
  (:func:`limit_scale`), and when their colours agree (:func:`colour_differences`).  The
  check is on pixels, so it means the same whatever the features (a random base
  included), and it tells a copy from a merely similar image of the same class, which
  feature distance alone cannot on small, similar pictures.
- A pair whose members sit in different parts is leakage, reported first.

Memory stays linear: neighbours come from :mod:`keras_cnn.doctor.neighbours`, and pairs are
verified in blocks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from keras_cnn.doctor.findings import empty_findings, finding_rows, ordered_findings
from keras_cnn.doctor.neighbours import nearest_neighbours
from keras_cnn.doctor.thumbnails import grey, is_flat

HASH_SIDE = 8                 # 8x8 frequencies: 64 bits
HASH_NEIGHBOURS = 5
FEATURE_NEIGHBOURS = 5
# Candidates differing in more hash bits are not verified: a slight change moves a few bits
# (the planted copies of the test set moved at most 12), unrelated pictures about 32.
HASH_CANDIDATE_LIMIT = 20
# Mean absolute difference of the standardised / rank-normalised thumbnails (inner 28x28)
# under which a pair is a near-duplicate.  On scikit-learn's digits (8x8 scans of similar
# handwriting, blown up: the hardest case) planted copies stayed under 0.6 of these limits
# (the better of the two) and distinct images above 1.04.
PIXEL_LIMIT = 0.045
RANK_LIMIT = 0.013
SEARCH_FACTOR = 9
# Mean chromaticity difference over which a pair is two colourings, not a copy: planted
# copies (brightened ones included) stayed under 0.018, distinct pictures were mostly above 0.04.
COLOUR_LIMIT = 0.035
# The limits rise with the set (limit_scale): up to this factor, to a third of the unaligned
# difference of the closest 2 % of candidate pairs, when there are enough pairs to tell.
MAX_LIMIT_SCALE = 3.0
CALIBRATION_QUANTILE = 0.02
CALIBRATION_MARGIN = 3.0
CALIBRATION_PAIRS = 100
# Pattern search of the alignment: first steps (row scale, row shift in pixels, column
# scale, column shift) and rounds (each halves the steps of a pair that did not improve).
_FIRST_STEPS = (0.04, 1.0, 0.04, 1.0)
_SEARCH_ROUNDS = 8
_SMOOTHING = 0.7              # Gaussian sigma (thumbnail pixels) applied before comparing
# Sum of both differences over their limits: a pair under the first is surely a copy, a
# pair over the second after four rounds surely not (no planted copy of the test sets was
# above 3 by then).
_SETTLED_SCORE = 0.5
_HOPELESS_SCORE = 6.0
_HOPELESS_AFTER = 3
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


def colour_differences(thumbnails: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mean difference of the two pictures' colours (chromaticity r, g on an 8x8 grid) for each pair.

    The pixel check compares grey levels; this keeps the same picture in another colour (a
    product photographed in red and in blue) from passing for a copy.  Brightening keeps
    the chromaticity, grey pictures have none to differ in.
    """
    side = thumbnails.shape[1]
    cells = thumbnails.astype(np.float32).reshape(len(thumbnails), 8, side // 8, 8, side // 8, 3).mean(axis=(2, 4))
    chromaticity = cells[..., :2] / (cells.sum(axis=-1, keepdims=True) + 1.0)
    return np.abs(chromaticity[pairs[:, 0]] - chromaticity[pairs[:, 1]]).mean(axis=(1, 2, 3))


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


def _axis_matrices(scales: np.ndarray, shifts: np.ndarray, side: int) -> np.ndarray:
    """(n, inner, side) matrices, one per pair, resampling one axis of a thumbnail: scaled about the
    centre by ``scales``, moved by ``shifts`` pixels, linear interpolation, edges clamped; only the
    inner rows the comparison uses."""
    centre = (side - 1) / 2
    targets = np.arange(_BORDER, side - _BORDER, dtype=np.float32)
    source = np.clip((targets[None, :] - centre) / scales[:, None] + centre + shifts[:, None], 0, side - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, side - 1)
    weight = (source - lower).astype(np.float32)
    matrices = np.zeros((len(scales), len(targets), side), dtype=np.float32)
    pair, row = np.indices(lower.shape)
    matrices[pair, row, lower] = 1 - weight
    matrices[pair, row, upper] += weight
    return matrices


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


class _Comparison:
    """The two thumbnails of each pair in a block, compared with the second moved by per-pair alignments.

    A thumbnail and its rank map travel side by side (n, side, 2 x side), so one pair of
    matrix products moves both.
    """

    def __init__(self, first: np.ndarray, second: np.ndarray, first_ranks: np.ndarray, second_ranks: np.ndarray):
        self.side = first.shape[1]
        identity = _axis_matrices(np.ones(len(first), np.float32), np.zeros(len(first), np.float32), self.side)
        self.first, self.first_ranks = self._moved(np.concatenate([first, first_ranks], axis=2), identity, identity)
        self.first = _standardised(self.first)
        self.second = np.concatenate([second, second_ranks], axis=2)

    def _moved(self, images: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The thumbnails and rank maps of ``images`` (n, side, 2 x side) moved, each flattened (n, inner²)."""
        moved = (rows @ images).reshape(len(images), rows.shape[1], 2, self.side) @ columns.transpose(0, 2, 1)[:, None]
        return moved[:, :, 0].reshape(len(images), -1), moved[:, :, 1].reshape(len(images), -1)

    def differences(self, alignment: np.ndarray,
                    pairs: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Mean |difference| of standardised and of rank-normalised thumbnails of ``pairs`` (positions in
        the block), the second moved by ``alignment`` (one row per pair: row scale, row shift,
        column scale, column shift)."""
        rows = _axis_matrices(alignment[:, 0], alignment[:, 1], self.side)
        columns = _axis_matrices(alignment[:, 2], alignment[:, 3], self.side)
        moved, moved_ranks = self._moved(self.second[pairs], rows, columns)
        pixel = np.abs(self.first[pairs] - _standardised(moved)).mean(axis=1)
        rank = np.abs(self.first_ranks[pairs] - moved_ranks).mean(axis=1)
        return pixel, rank


def _search_alignments(comparison: _Comparison, alignment: np.ndarray, best_pixel: np.ndarray,
                       best_rank: np.ndarray) -> None:
    """Improve every pair's ``alignment`` (and its differences, in place) by a pattern search.

    A pair leaves the search once it is clearly a copy (both differences far under the
    limits) or, after four rounds, clearly not one: most candidates are distinct pictures.
    """
    best = best_pixel / PIXEL_LIMIT + best_rank / RANK_LIMIT
    steps = np.tile(np.array(_FIRST_STEPS, np.float32), (len(alignment), 1))
    active = np.arange(len(alignment))
    for search_round in range(_SEARCH_ROUNDS):
        improved = np.zeros(len(alignment), dtype=bool)
        for parameter in range(4):
            for direction in (1.0, -1.0):
                trial = alignment[active].copy()
                trial[:, parameter] += direction * steps[active, parameter]
                trial_pixel, trial_rank = comparison.differences(trial, active)
                score = trial_pixel / PIXEL_LIMIT + trial_rank / RANK_LIMIT
                better = score < best[active]
                chosen = active[better]
                alignment[chosen], best[chosen] = trial[better], score[better]
                best_pixel[chosen], best_rank[chosen] = trial_pixel[better], trial_rank[better]
                improved[chosen] = True
        steps[~improved] /= 2
        settled = best[active] < _SETTLED_SCORE
        if search_round >= _HOPELESS_AFTER:
            settled |= best[active] > _HOPELESS_SCORE
        active = active[~settled]
        if not len(active):
            break


def alignment_differences(grey_thumbnails: np.ndarray, pairs: np.ndarray,
                          search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each pair: the mean |difference| of standardised and of rank-normalised thumbnails (inner
    part), after the alignment of the second that brings them closest (see the module docstring).

    The alignment, a scale and a shift per axis, is found per pair by a pattern search: try
    each parameter a step up and down, keep what helps, halve a pair's steps when nothing
    does.  ``search=False`` compares the thumbnails as they are.
    """
    from scipy.ndimage import gaussian_filter

    # A light blur first: resampling a noisy picture anew (a resize, a crop) draws new noise.
    thumbnails = gaussian_filter(np.asarray(grey_thumbnails, dtype=np.float32), (0, _SMOOTHING, _SMOOTHING))
    ranked = _ranks(thumbnails)
    pixel = np.empty(len(pairs), dtype=np.float32)
    rank = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), _BLOCK):
        block = slice(start, start + _BLOCK)
        first, second = pairs[block, 0], pairs[block, 1]
        comparison = _Comparison(thumbnails[first], thumbnails[second], ranked[first], ranked[second])
        alignment = np.tile(np.array([1.0, 0.0, 1.0, 0.0], np.float32), (len(first), 1))
        best_pixel, best_rank = comparison.differences(alignment)
        if search:
            _search_alignments(comparison, alignment, best_pixel, best_rank)
        pixel[block], rank[block] = best_pixel, best_rank
    return pixel, rank


def limit_scale(unaligned_ratios: np.ndarray) -> float:
    """How far the limits may be raised for this set: 1 to ``MAX_LIMIT_SCALE``.

    ``unaligned_ratios``: each candidate pair's smaller difference over its limit, unaligned.
    Nearly all candidates are distinct pictures; a copy must be far closer than the closest
    of them (the ``CALIBRATION_QUANTILE``), so the limits may rise to a third of that.  On
    pictures as alike as the digits this leaves the limits as they are; on photos, whose
    distinct look-alikes are several times farther, it lets a noisy copy through.
    """
    if len(unaligned_ratios) < CALIBRATION_PAIRS:
        return 1.0
    closest_distinct = float(np.quantile(unaligned_ratios, CALIBRATION_QUANTILE))
    return float(np.clip(closest_distinct / CALIBRATION_MARGIN, 1.0, MAX_LIMIT_SCALE))


def near_duplicate_pairs(thumbnails: np.ndarray, feature_neighbours: np.ndarray | None,
                         same_content: np.ndarray) -> pd.DataFrame:
    """Verified near-duplicate pairs of RGB ``thumbnails``: columns first, second (positions), score, detail.

    ``feature_neighbours``: each image's nearest neighbours in feature space (candidates
    beside the hash's; None without features).  ``same_content``: each image's content id
    (its SHA-1); pairs of identical files are left to the exact check.
    """
    grey_thumbnails = grey(thumbnails)
    hashes = perceptual_hashes(grey_thumbnails)
    pairs = candidate_pairs(hashes, feature_neighbours)
    if len(pairs):
        pairs = pairs[same_content[pairs[:, 0]] != same_content[pairs[:, 1]]]
        bits = hash_distances(hashes, pairs[:, 0], pairs[:, 1])
        flat = is_flat(grey_thumbnails)  # blank frames look alike whatever they show
        keep = (bits <= HASH_CANDIDATE_LIMIT) & ~flat[pairs[:, 0]] & ~flat[pairs[:, 1]]
        pairs, bits = pairs[keep], bits[keep]
    if not len(pairs):
        return pd.DataFrame({"first": [], "second": [], "score": [], "detail": []})
    # Compared as they are first: that calibrates the limits (on every candidate, whatever its
    # colour), and only pairs of one colouring close enough that an alignment could bring
    # them under the limits are searched (unaligned, a planted 1-pixel crop of a 32-pixel
    # digit stayed within 5 times the limits, a 2-pixel crop of a noisy 96-pixel picture within 8.5).
    pixel, rank = alignment_differences(grey_thumbnails, pairs, search=False)
    scale = limit_scale(np.minimum(pixel / PIXEL_LIMIT, rank / RANK_LIMIT))
    same_colours = colour_differences(thumbnails, pairs) <= COLOUR_LIMIT
    pixel[~same_colours] = rank[~same_colours] = np.inf
    close = (pixel <= SEARCH_FACTOR * scale * PIXEL_LIMIT) & (rank <= SEARCH_FACTOR * scale * RANK_LIMIT)
    if close.any():
        pixel[close], rank[close] = alignment_differences(grey_thumbnails, pairs[close])
    ratio = np.minimum(pixel / PIXEL_LIMIT, rank / RANK_LIMIT) / scale
    near = ratio <= 1
    scores = np.clip(1 - ratio / 2, 0, 1)  # 1 for identical thumbnails, 0.5 at the limit
    details = [f"pixel difference {pixel[row]:.3f}, brightness-free {rank[row]:.3f} (limits x{scale:.2f}), "
               f"hash distance {bits[row]}" for row in np.flatnonzero(near)]
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
