"""Connected CR regions of a detector, labelled band by band in bounded memory.

A detector's mask is read in horizontal bands (whole Zarr chunk rows). Each band is labelled
with 8-connectivity; components that touch the band's last row stay *open* and are joined to
the components of the next band that touch them (union-find over the two facing rows), so a CR
crossing any number of band or chunk boundaries comes out whole. A component is *complete*
when nothing of it lies on the last row read; its pixels are then handed on in a
:class:`Components` batch and forgotten. Memory is one band plus the pixels of the open
components, whatever the detector's size.

Ids are deterministic and independent of the bands: CRs are numbered 1, 2, ... in raster order
of their first pixel (row-major), which is exactly the numbering of
``scipy.ndimage.label(mask, numpy.ones((3, 3)))`` on the whole detector.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: 8-connectivity: diagonal neighbours belong to the same CR.
STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass
class Band:
    """Rows ``y0 .. y0 + mask.shape[0] - 1`` of a detector.

    Attributes
    ----------
    y0 : int
        First row.
    mask : numpy.ndarray
        bool (h, width): CR pixels.
    values : dict of numpy.ndarray
        Per-pixel arrays of the same shape (image, background, ...) whose values at CR
        pixels travel with the components.
    """

    y0: int
    mask: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Components:
    """Complete connected components, their pixels grouped and in raster order.

    Attributes
    ----------
    width : int
        Detector width (for raster indices).
    first : numpy.ndarray
        int64 (n,): raster index ``y * width + x`` of each component's first pixel, increasing.
    offsets : numpy.ndarray
        int64 (n + 1,): component ``i`` owns pixels ``offsets[i]:offsets[i + 1]``.
    y, x : numpy.ndarray
        int64 pixel coordinates.
    values : dict of numpy.ndarray
        Per-pixel values (from the bands' ``values``).
    """

    width: int
    first: np.ndarray
    offsets: np.ndarray
    y: np.ndarray
    x: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.first.size)

    @property
    def sizes(self) -> np.ndarray:
        """Pixels per component."""
        return np.diff(self.offsets)

    @property
    def component(self) -> np.ndarray:
        """Component index (0 .. n-1) of every pixel."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)


def _group(y: np.ndarray, x: np.ndarray, rep: np.ndarray, values: dict[str, np.ndarray], width: int):
    """Group pixels by representative; groups ordered by first pixel, pixels in raster order."""
    raster = y * width + x
    order = np.argsort(raster, kind="stable")
    rep_sorted = rep[order]
    reps, first_pos = np.unique(rep_sorted, return_index=True)
    first = raster[order][first_pos]
    rank = np.empty(reps.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(reps.size)
    comp = rank[np.searchsorted(reps, rep_sorted)]
    order = order[np.argsort(comp, kind="stable")]  # stable: raster order kept inside a group
    sizes = np.bincount(comp, minlength=reps.size)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Components(
        width=width,
        first=np.sort(first),
        offsets=offsets,
        y=y[order],
        x=x[order],
        values={k: v[order] for k, v in values.items()},
    )


class _Open:
    """Pixels of open components, as lists of arrays per representative."""

    def __init__(self) -> None:
        self.parts: dict[int, list[tuple[np.ndarray, ...]]] = {}

    def add(self, rep: int, part: tuple[np.ndarray, ...]) -> None:
        self.parts.setdefault(rep, []).append(part)

    def merge_into(self, rep: int, others: Iterable[int]) -> None:
        for o in others:
            if o != rep and o in self.parts:
                self.parts.setdefault(rep, []).extend(self.parts.pop(o))

    def pop(self, reps: Iterable[int]) -> list[tuple[int, tuple[np.ndarray, ...]]]:
        out: list[tuple[int, tuple[np.ndarray, ...]]] = []
        for r in reps:
            out.extend((r, part) for part in self.parts.pop(r, []))
        return out


def _checked_mask(band: Band, width: int, expected_y: int) -> np.ndarray:
    """The band's mask as bool, after checking its width and that it follows the last band."""
    mask = np.asarray(band.mask, dtype=bool)
    if mask.ndim != 2 or mask.shape[1] != width:
        raise ValueError(f"band at row {band.y0} has shape {mask.shape}, expected (h, {width})")
    if band.y0 != expected_y:
        raise ValueError(f"bands must be consecutive: expected row {expected_y}, got {band.y0}")
    return mask


def _facing_pairs(
    prev_row: np.ndarray, first_row: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(representative above, provisional id below) of each touching pair across the facing rows.

    ``prev_row[c + d]`` touches ``first_row[c]`` for d in -1, 0, 1 (8-connectivity).
    """
    width = first_row.size
    a_parts, b_parts = [], []
    for d in (-1, 0, 1):
        lo, hi = max(0, -d), min(width, width - d)
        prev = prev_row[lo + d : hi + d]
        cur = first_row[lo:hi]
        both = (prev > 0) & (cur > 0)
        a_parts.append(prev[both])
        b_parts.append(ids[cur[both] - 1])
    return np.concatenate(a_parts), np.concatenate(b_parts)


def _join(a: np.ndarray, b: np.ndarray, ids: np.ndarray, open_: _Open) -> tuple[np.ndarray, set[int]]:
    """Union the components joined by the pairs ``(a, b)``: each group takes its smallest id.

    The open pixels of merged components move to that representative in ``open_``. Returns the
    band's ids mapped to their representatives, and the open representatives that were joined.
    """
    if not a.size:
        return ids, set()
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = a.size
    graph = coo_matrix((np.ones(m), (inverse[:m], inverse[m:])), shape=(nodes.size, nodes.size))
    _, group = connected_components(graph, directed=False)
    group_rep = np.full(group.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(group_rep, group, nodes)
    node_rep = group_rep[group]
    for g in np.unique(group):
        members = nodes[group == g]
        open_.merge_into(int(group_rep[g]), (int(v) for v in members))
    local = np.searchsorted(nodes, ids)
    hit = (local < nodes.size) & (nodes[np.minimum(local, nodes.size - 1)] == ids)
    return np.where(hit, node_rep[np.minimum(local, nodes.size - 1)], ids), set(a.tolist())


def _concat_parts(
    parts: list[tuple[int, tuple[np.ndarray, ...]]], keys: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict[str, list[np.ndarray]]]:
    """The y, x, representative and value arrays of popped open parts, as lists to concatenate."""
    return (
        [p[1][0] for p in parts],
        [p[1][1] for p in parts],
        [np.full(p[1][0].size, p[0], np.int64) for p in parts],
        {k: [p[1][2 + i] for p in parts] for i, k in enumerate(keys)},
    )


def _batch(
    parts: list[tuple[int, tuple[np.ndarray, ...]]],
    keys: list[str],
    width: int,
    own: tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]] | None = None,
) -> Components | None:
    """Complete components from popped open ``parts`` and, first, a band's own complete pixels.

    ``own`` is ``(y, x, representative, values in keys order)``; None is returned when there
    is no pixel.
    """
    ys, xs, reps, vals = _concat_parts(parts, keys)
    if own is not None:
        ys, xs, reps = [own[0], *ys], [own[1], *xs], [own[2], *reps]
        vals = {k: [v, *vals[k]] for k, v in zip(keys, own[3], strict=True)}
    y_all = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    if not y_all.size:
        return None
    values = {k: np.concatenate(v) for k, v in vals.items()}
    return _group(y_all, np.concatenate(xs), np.concatenate(reps), values, width)


def label_bands(bands: Iterable[Band], width: int) -> Iterator[Components]:
    """Label a detector band by band; yield each batch of components as they complete.

    Parameters
    ----------
    bands : iterable of Band
        Consecutive bands from row 0 to the last row, all ``width`` wide and with the same
        ``values`` keys.
    width : int
        Detector width.

    Yields
    ------
    Components
        Complete components; over all batches, every component exactly once. Batches come
        in the order components complete, so callers sort by ``first`` for the final ids.
    """
    keys: list[str] | None = None
    open_ = _Open()
    prev_row = np.zeros(width, np.int64)  # representative of each pixel of the last row read, 0: none
    next_id = 1
    expected_y = 0
    for band in bands:
        mask = _checked_mask(band, width, expected_y)
        expected_y += mask.shape[0]
        if keys is None:
            keys = sorted(band.values)
        lab, n = ndimage.label(mask, structure=STRUCTURE)
        ids = np.arange(next_id, next_id + n, dtype=np.int64)  # provisional id of each local label
        next_id += n
        open_before = set(open_.parts)
        ids, joined = _join(*_facing_pairs(prev_row, lab[0], ids), ids, open_)
        # Pixels of this band, tagged with their representative.
        ys, xs = np.nonzero(lab)
        rep = ids[lab[ys, xs] - 1]
        vals = tuple(np.asarray(band.values[k])[ys, xs] for k in keys)
        last = lab[-1]
        touching = set(np.unique(ids[last[last > 0] - 1]).tolist()) if n else set()
        prev_row = np.where(last > 0, ids[np.maximum(last, 1) - 1], 0) if n else np.zeros(width, np.int64)
        # Open components no band pixel joined are complete; so are this band's others.
        done_open = [r for r in open_before if r not in joined]
        merged_reps = set(open_.parts) - set(done_open)
        finished = [r for r in merged_reps if r not in touching]
        parts = open_.pop(done_open + finished)
        keep = np.isin(rep, np.fromiter(touching, np.int64, len(touching)))
        for r in np.unique(rep[keep]).tolist():
            sel = rep == r
            open_.add(r, (ys[sel] + band.y0, xs[sel]) + tuple(v[sel] for v in vals))
        own = (ys[~keep] + band.y0, xs[~keep], rep[~keep], [v[~keep] for v in vals])
        batch = _batch(parts, keys, width, own)
        if batch is not None:
            yield batch
    rest = _batch(open_.pop(list(open_.parts)), keys or [], width)
    if rest is not None:
        yield rest


def label_whole(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference labelling of a whole mask (8-connectivity, raster-order ids)."""
    lab, n = ndimage.label(np.asarray(mask, dtype=bool), structure=STRUCTURE)
    return lab, int(n)
