"""Exact tiled inference: tiles with a halo, origins on a fixed grid, batched.

A tile's prediction equals whole-image inference at every pixel at least one receptive radius
from the tile's edge, provided pooling sees the same pixel grid. So each tile is a core of
``tile`` pixels plus a ``halo`` on every side (halo ≥ receptive radius + bad-pixel fill radius),
cores start on multiples of ``align`` = 2**depth in the *global* image frame (``origin`` gives a
block's place in its detector), and outside the image the input is 0 (the sky, in normalised
units), exactly as for the whole image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crscale.detection.badpix import FILL_RADIUS
from crscale.models.unet import UNetConfig


def round_up(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is ≥ ``n``."""
    return -(-n // m) * m


def alignment(config: UNetConfig) -> int:
    """Tile origins are multiples of 2**depth (a multiple of the 2**(depth-1) pooling grid)."""
    return 2**config.depth


def required_halo(config: UNetConfig) -> int:
    """Halo for exact tiling: receptive radius plus bad-pixel fill radius, rounded up to the grid."""
    return round_up(config.receptive_radius + FILL_RADIUS, alignment(config))


def core_size(extent: int, tile: int, align: int) -> int:
    """Core size along one axis: at most ``tile`` (rounded up to ``align``), tiles as even as the grid allows.

    ``extent`` is the axis length from the grid line before the image (``offset + n``). The
    number of tiles is the fewest cores of ``tile`` that cover it; the core then shrinks to the
    smallest multiple of ``align`` that still covers it with that many. A 2048-px axis with
    ``tile`` 448 gets 5 cores of 416 rather than 5 of 448 (192 px computed past the edge): the
    network computes 1.37x the image's pixels instead of 1.56x.
    """
    t = round_up(max(tile, align), align)
    n = -(-extent // t)
    return round_up(-(-extent // n), align)


def tile_origins(h: int, w: int, tile: tuple[int, int], offset: tuple[int, int]) -> list[tuple[int, int]]:
    """Core origins, in padded coordinates, of the tiles that cover an (h, w) image."""
    ty, tx = tile
    ny = -(-(offset[0] + h) // ty)
    nx = -(-(offset[1] + w) // tx)
    return [(i * ty, j * tx) for i in range(ny) for j in range(nx)]


def tile_layout(
    h: int, w: int, tile: int, align: int, *, origin: tuple[int, int] = (0, 0)
) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """Core shape, grid offset and core origins (padded coordinates) of an (h, w) image's tiles.

    The one place that decides the tiles, so that the numpy and torch paths (and the progress
    bar) make the same network calls.
    """
    off = (origin[0] % align, origin[1] % align)
    core = (core_size(off[0] + h, tile, align), core_size(off[1] + w, tile, align))
    return core, off, tile_origins(h, w, core, off)


def predict_tiled(
    x: np.ndarray,
    run_batch: Callable[[np.ndarray], np.ndarray],
    *,
    tile: int,
    halo: int,
    align: int,
    origin: tuple[int, int] = (0, 0),
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run a network over a normalised image in halo'd tiles and reassemble the output.

    Parameters
    ----------
    x : numpy.ndarray
        Normalised 2-D input (float32), bad pixels already filled.
    run_batch : callable
        Maps a (B, 1, H, W) float32 batch to (B, 1, H, W) float32 outputs.
    tile : int
        Largest core size in pixels (rounded up to ``align``); each axis is cut into the fewest
        cores of at most that size, made as even as the grid allows (:func:`core_size`).
    halo, align : int
        See the module docstring; ``halo`` must be a multiple of ``align``.
    origin : tuple of int
        Global (y, x) of ``x[0, 0]`` in its detector, so that a block's tiles sit on the
        detector's grid.
    batch_size : int
        Tiles per network call.
    progress : callable, optional
        Called with the number of tiles finished after each batch.
    """
    if halo % align:
        raise ValueError(f"halo {halo} is not a multiple of the alignment {align}")
    h, w = x.shape
    (ty, tx), off, origins = tile_layout(h, w, tile, align, origin=origin)
    ny = origins[-1][0] + ty
    nx = origins[-1][1] + tx
    # Mirror the image beyond its edges: a network fed zeros there sees a cliff (for models
    # whose input is not sky-subtracted, deepCR's, a drop to 0 e-) and flags the edge rows.
    # The mirror depends only on pixels within the halo of the edge, so a block that reaches a
    # detector edge is padded exactly as the whole detector is.
    pads = ((halo + off[0], ny + halo - off[0] - h), (halo + off[1], nx + halo - off[1] - w))
    padded = np.pad(np.asarray(x, np.float32), pads, mode="symmetric")
    out = np.empty((ny, nx), np.float32)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = np.stack([padded[y : y + ty + 2 * halo, x0 : x0 + tx + 2 * halo] for y, x0 in chunk])
        pred = run_batch(batch[:, None])
        for (y, x0), p in zip(chunk, pred, strict=True):
            out[y : y + ty, x0 : x0 + tx] = p[0, halo : halo + ty, halo : halo + tx]
        if progress is not None:
            progress(len(chunk))
    return out[off[0] : off[0] + h, off[1] : off[1] + w]
