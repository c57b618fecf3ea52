"""Per-CR features of a batch of labelled components (vectorised over the batch).

Charges are in electrons: ``(image - background) * gain`` summed over the CR's pixels, where
``background`` is the local background at each pixel (the archive's inpainted ``clean`` image,
i.e. the sky and sources interpolated from the pixels around the CR). Energies use 3.65 eV
per electron-hole pair in silicon.

Shape measures:

- ``length``: geodesic diameter + 1 px: the longest of the shortest paths between two of the
  CR's pixels, walking through the CR with steps of 1 (side) or √2 (diagonal). It follows a
  curved worm along its body, where a bounding box or second moments would measure its chord.
- ``width``: ``n_pixels / length``, the mean thickness.
- ``straightness``: free-space 8-connected distance between the two ends of that longest path
  (+1) over ``length``; 1 for straight lines.
- ``orientation``: angle of the major axis of the pixels' second moments, in degrees from +x
  towards +y, in (-90, 90].
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from crscale.catalogue.labels import Components
from crscale.catalogue.morphology import MorphologyRules, classify
from crscale.io.catalogue_schema import EV_PER_ELECTRON

_SQRT2 = float(np.sqrt(2.0))
# Forward neighbours: each 8-connected pair of pixels once.
_FORWARD = ((0, 1, 1.0), (1, -1, _SQRT2), (1, 0, 1.0), (1, 1, _SQRT2))


def _first_per_group(flags: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    """Index of the first pixel of each component where ``flags`` is true."""
    idx = np.flatnonzero(flags)
    groups, pos = np.unique(comp[idx], return_index=True)
    out = np.zeros(n, np.int64)
    out[groups] = idx[pos]
    return out


def geodesic_ends(comps: Components) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """End points and length of the longest shortest path of every component.

    Two sweeps of Dijkstra's algorithm over all components at once (they are disjoint, so one
    graph holds them all): from each component's first pixel to its farthest pixel ``a``,
    then from ``a`` to its farthest pixel ``b``. For trees and paths this is the exact
    diameter; for blobs, the distance between two of the farthest pixels.

    Returns
    -------
    a, b : numpy.ndarray
        Pixel indices (into ``comps.y`` / ``comps.x``) of the two ends.
    distance : numpy.ndarray
        Path length from ``a`` to ``b`` in pixels (centre to centre).
    """
    n = len(comps)
    y, x, width = comps.y, comps.x, comps.width
    npix = y.size
    raster = y * width + x
    order = np.argsort(raster)
    sorted_raster = raster[order]
    rows, cols, weights = [], [], []
    for dy, dx, w in _FORWARD:
        ok = (x + dx >= 0) & (x + dx < width)
        target = np.where(ok, (y + dy) * width + x + dx, -1)
        pos = np.minimum(np.searchsorted(sorted_raster, target), npix - 1)
        hit = ok & (sorted_raster[pos] == target)
        rows.append(np.flatnonzero(hit))
        cols.append(order[pos[hit]])
        weights.append(np.full(int(hit.sum()), w))
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(npix, npix)
    ).tocsr()
    comp = comps.component
    groups = comps.offsets[:-1]
    sources = groups
    ends = []
    dist = np.zeros(npix)
    for _ in range(2):
        dist = dijkstra(graph, directed=False, indices=sources, min_only=True)
        farthest = np.maximum.reduceat(dist, groups) if n else dist[:0]
        sources = _first_per_group(dist == farthest[comp], comp, n)
        ends.append(sources)
    return ends[0], ends[1], dist[ends[1]]


def cr_features(
    comps: Components,
    shape: tuple[int, int],
    *,
    gain: float,
    saturation: float | None = None,
    rules: MorphologyRules | None = None,
) -> dict[str, np.ndarray]:
    """Features of every component in a batch.

    Parameters
    ----------
    comps : Components
        Complete components with per-pixel ``values["image"]`` and ``values["background"]``
        (image units).
    shape : tuple of int
        Detector shape (rows, columns), for the distance to the edge.
    gain : float
        e-/ADU.
    saturation : float, optional
        Saturation level in image units; CRs reaching it are flagged ``saturated``.
    rules : MorphologyRules, optional
        Morphology thresholds (default from the config).

    Returns
    -------
    dict of numpy.ndarray
        One array per column of :data:`crscale.io.catalogue_schema.CR_SCHEMA` except
        ``exposure``, ``detector`` and ``id``, plus ``first`` (raster index of the first pixel).
    """
    n = len(comps)
    comp = comps.component
    starts = comps.offsets[:-1]
    npx = comps.sizes.astype(np.float64)
    y = comps.y.astype(np.float64)
    x = comps.x.astype(np.float64)
    image = np.asarray(comps.values["image"], dtype=np.float64)
    background = np.asarray(comps.values["background"], dtype=np.float64)
    signal = (image - background) * float(gain)
    signal = np.where(np.isfinite(signal), signal, 0.0)

    def total(w: np.ndarray) -> np.ndarray:
        return np.bincount(comp, weights=w, minlength=n)

    charge = total(signal)
    positive = np.maximum(signal, 0.0)
    wsum = total(positive)
    has_weight = wsum > 0
    safe = np.where(has_weight, wsum, 1.0)
    xc = np.where(has_weight, total(positive * x) / safe, total(x) / npx)
    yc = np.where(has_weight, total(positive * y) / safe, total(y) / npx)
    # Second moments of the pixel positions (shape, not charge: a bright end must not tilt it).
    mx, my = total(x) / npx, total(y) / npx
    dx, dy = x - mx[comp], y - my[comp]
    sxx, syy, sxy = total(dx * dx) / npx, total(dy * dy) / npx, total(dx * dy) / npx
    theta = np.degrees(0.5 * np.arctan2(2.0 * sxy, sxx - syy))
    theta = np.where(theta <= -90.0, theta + 180.0, theta)

    a, b, dist = geodesic_ends(comps)
    length = dist + 1.0
    ddx = np.abs(comps.x[a] - comps.x[b]).astype(np.float64)
    ddy = np.abs(comps.y[a] - comps.y[b]).astype(np.float64)
    free = np.maximum(ddx, ddy) + (_SQRT2 - 1.0) * np.minimum(ddx, ddy)
    straightness = np.minimum((free + 1.0) / length, 1.0)

    x_min = np.minimum.reduceat(comps.x, starts) if n else comps.x[:0]
    x_max = np.maximum.reduceat(comps.x, starts) if n else comps.x[:0]
    y_min = np.minimum.reduceat(comps.y, starts) if n else comps.y[:0]
    y_max = np.maximum.reduceat(comps.y, starts) if n else comps.y[:0]
    h, w = shape
    edge = np.minimum.reduce([x_min, y_min, w - 1 - x_max, h - 1 - y_max]) if n else x_min
    peak = np.maximum.reduceat(signal, starts) if n else signal[:0]
    if saturation is not None and np.isfinite(saturation):
        with np.errstate(invalid="ignore"):
            saturated = total((image >= saturation).astype(np.float64)) > 0
    else:
        saturated = np.zeros(n, bool)
    out: dict[str, Any] = {
        "first": comps.first,
        "x": xc,
        "y": yc,
        "x_min": x_min,
        "x_max": x_max,
        "y_min": y_min,
        "y_max": y_max,
        "n_pixels": comps.sizes,
        "length": length,
        "width": npx / length,
        "orientation": theta,
        "straightness": straightness,
        "peak_e": peak,
        "charge_e": charge,
        "energy_ev": charge * EV_PER_ELECTRON,
        "edge_distance": edge,
        "saturated": saturated,
        "morphology": classify(comps.sizes, length, straightness, rules=rules),
    }
    return out
