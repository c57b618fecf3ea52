"""The tile layout: fewest cores per axis, as even as the grid allows, reassembled exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from crscale.detection.tiling import core_size, predict_tiled, round_up, tile_layout


@pytest.mark.parametrize("align", [4, 8, 16])
def test_core_size_is_the_smallest_even_cut_into_the_fewest_cores(align):
    for extent in [1, 7, 8, 9, 100, 448, 449, 1020, 1523, 2048, 2176, 4096, 4224]:
        for tile in [1, 136, 448, 512, 1024]:
            top = round_up(max(tile, align), align)
            core = core_size(extent, tile, align)
            n = -(-extent // core)
            assert core % align == 0 and align <= core <= top
            assert n == -(-extent // top)  # no more tiles than cores of the largest size need
            assert n * core >= extent
            assert n * (core - align) < extent  # one grid step smaller would not cover it


def test_a_2048_axis_gets_five_cores_of_416_and_the_network_computes_less():
    assert core_size(2048, 448, 8) == 416
    # Network pixels per image pixel with a 32-px halo, one 2048^2 image.
    before = (5 * (448 + 64) / 2048) ** 2
    now = (5 * (416 + 64) / 2048) ** 2
    assert now < 0.9 * before


def _box_mean(batch: np.ndarray) -> np.ndarray:
    """A stand-in network with a receptive radius of 2: the 5x5 mean of each tile."""
    return np.stack([ndimage.uniform_filter(t, size=(1, 5, 5), mode="constant") for t in batch])


@pytest.mark.parametrize("origin", [(0, 0), (3, 5), (1021, 17)])
def test_tiles_reassemble_exactly_and_stay_within_the_largest_tile(origin):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(301, 457)).astype(np.float32)
    halo, align, tile = 8, 8, 96
    whole = predict_tiled(x, _box_mean, tile=4096, halo=halo, align=align, origin=origin)
    shapes = []

    def run(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return _box_mean(batch)

    tiled = predict_tiled(x, run, tile=tile, halo=halo, align=align, origin=origin, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-6, rtol=0)
    (ty, tx), off, origins = tile_layout(*x.shape, tile, align, origin=origin)
    assert sum(s[0] for s in shapes) == len(origins)
    assert all(s[2:] == (ty + 2 * halo, tx + 2 * halo) for s in shapes)
    assert ty <= tile and tx <= tile
    # Cores tile the padded frame without gaps or overlaps.
    assert len(set(origins)) == len(origins)
    assert origins[-1][0] + ty >= off[0] + x.shape[0] and origins[-1][1] + tx >= off[1] + x.shape[1]
