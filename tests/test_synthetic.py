"""The built-in synthetic dataset: factor structure, determinism and what the pixels show."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
import pytest

from dydis.data.factors import FactorSpace
from dydis.data.source import Block
from dydis.data.synthetic import (
    FACTOR_NAMES,
    SHAPES3D_GRID,
    SyntheticSource,
    factor_values,
    floor_textures,
    render,
)
from dydis.errors import ConfigError

SMALL = (4, 4, 4, 3, 4, 5)  # every shape, both orientation extremes, the scale extremes

# Patches that show one surface in every geometry of the full grid (checked against the
# surface maps when the renderer was written): floor at the bottom, wall at the top, and the
# object in the middle, where the camera aims at its axis.
FLOOR, WALL, OBJECT = np.s_[52:64, :], np.s_[0:12, :], np.s_[32:39, 30:34]


@pytest.fixture(scope="module")
def small() -> tuple[SyntheticSource, np.ndarray, Block]:
    """A source on SMALL, every row of it, and their block."""
    source = SyntheticSource(SMALL)
    rows = np.arange(source.n_rows)
    return source, rows, source.read(rows)


def hue_of(colours: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) of RGB colours (n, 3) in 0..255."""
    return np.array([colorsys.rgb_to_hsv(*(c / 255.0))[0] for c in colours])


def circular_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    gap = np.abs(a - b) % 1.0
    return np.minimum(gap, 1.0 - gap)


def test_default_source_has_the_shapes3d_structure() -> None:
    source = SyntheticSource()
    assert source.path is None and source.attribute_names == ()
    assert source.factor_names == FACTOR_NAMES
    assert FACTOR_NAMES == ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    assert source.factor_sizes == SHAPES3D_GRID == (10, 10, 10, 8, 4, 15)
    assert source.n_rows == 480_000
    rows = np.array([0, 123_456, 479_999])
    block = source.read(rows)
    assert block.images.shape == (3, 64, 64, 3) and block.images.dtype == np.uint8
    np.testing.assert_array_equal(block.factors, [[0] * 6, [2, 5, 7, 1, 2, 6], [9, 9, 9, 7, 3, 14]])


def test_factor_values_follow_shapes3d() -> None:
    hue, _, _, scale, shape, orientation = factor_values(SHAPES3D_GRID)
    np.testing.assert_allclose(hue, np.arange(10) / 10)
    np.testing.assert_allclose(scale, np.linspace(0.75, 1.25, 8))
    np.testing.assert_array_equal(shape, [0, 1, 2, 3])
    np.testing.assert_allclose(orientation, np.linspace(-30, 30, 15))
    values = factor_values((4, 1, 2, 1, 2, 1))
    np.testing.assert_allclose(values[0], [0, 0.25, 0.5, 0.75])
    assert values[1].tolist() == [0.0] and values[3].tolist() == [1.0] and values[5].tolist() == [0.0]
    np.testing.assert_array_equal(values[4], [0, 1])


def test_block_shapes_dtypes_and_factors(small) -> None:
    source, rows, block = small
    assert block.images.shape == (source.n_rows, 64, 64, 3) and block.images.dtype == np.uint8
    assert block.factors.dtype == np.int64 and block.attributes is None and block.split is None
    np.testing.assert_array_equal(block.factors, FactorSpace(FACTOR_NAMES, SMALL).to_factors(rows))
    assert block.factors[1].tolist() == [0, 0, 0, 0, 0, 1]  # orientation varies fastest


def test_rendering_is_deterministic(small) -> None:
    _, rows, block = small
    images = block.images
    again = SyntheticSource(SMALL).read(rows).images
    assert again.tobytes() == images.tobytes()
    factors = FactorSpace(FACTOR_NAMES, SMALL).to_factors(rows[::97])
    assert render(factors, SMALL).tobytes() == images[::97].tobytes()


def test_pinned_digest() -> None:
    """The pixels themselves are pinned: a renderer change changes every dataset built from it."""
    images = SyntheticSource((2, 2, 2, 2, 4, 2)).read(np.arange(128)).images
    assert hashlib.sha256(images.tobytes()).hexdigest() == PINNED_DIGEST


PINNED_DIGEST = "f0f7b7b708f124fbc87db12b5449f290d6168f7627c8b0a775e3403e68fdef35"


def test_subsets_and_blocks_equal_slices_of_a_full_read(small) -> None:
    source, rows, block = small
    images = block.images
    subset = np.sort(np.random.default_rng(0).choice(source.n_rows, 300, replace=False))
    fresh = SyntheticSource(SMALL)
    np.testing.assert_array_equal(fresh.read(subset).images, images[subset])
    blocks = [fresh.read(block).images for block in np.array_split(rows, 7)]
    np.testing.assert_array_equal(np.concatenate(blocks), images)
    assert fresh.read(np.zeros(0, np.int64)).images.shape == (0, 64, 64, 3)


def test_every_factor_changes_the_image_whatever_the_others(small) -> None:
    cube = small[2].images.reshape(*SMALL, -1)
    for axis, name in enumerate(FACTOR_NAMES):
        changed = np.diff(cube.astype(np.int16), axis=axis).any(axis=-1)
        assert changed.all(), f"{name}: {np.count_nonzero(~changed)} neighbouring pairs render the same image"


@pytest.mark.parametrize(("factor", "patch"), [(0, FLOOR), (1, WALL), (2, OBJECT)], ids=["floor", "wall", "object"])
def test_each_surface_takes_its_hue(small, factor, patch) -> None:
    images, factors = small[2].images, small[2].factors
    colours = images[(slice(None), *patch)].reshape(len(images), -1, 3).mean(axis=1)
    gap = circular_gap(hue_of(colours), factors[:, factor] / SMALL[factor])
    assert gap.max() < 0.02
    assert colours.max(axis=1).min() > 60  # lit, not black


def test_floor_shadow_and_occlusion_fade_out_inside_the_baked_square() -> None:
    """Floor outside the baked square reads the texture border, so the border must be unshadowed."""
    for shape in range(4):
        for texture in floor_textures(shape, 1.25):
            border = np.concatenate([texture[0], texture[-1], texture[:, 0], texture[:, -1]])
            assert (border == 1.0).all() and texture.min() < 0.9


@pytest.mark.parametrize("grid", [(10, 10, 10, 8, 5, 15), (10, 10, 10, 8, 4), (10, 10, 10, 8, 4, 15, 2),
                                  (0, 10, 10, 8, 4, 15), (10, -1, 10, 8, 4, 15), (10, 10, 2.5, 8, 4, 15),
                                  "abcdef", None, 7])
def test_invalid_grids_raise_config_error(grid) -> None:
    with pytest.raises(ConfigError, match="grid") as error:
        SyntheticSource(grid)
    assert "\n" not in str(error.value)


def test_rows_out_of_range_are_rejected() -> None:
    source = SyntheticSource((1, 1, 1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        source.read(np.array([0, 2]))
