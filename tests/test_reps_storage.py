"""A model's stored representation: float16 where that keeps float16's precision, float32
otherwise; old float32 files read as before."""

from __future__ import annotations

import numpy as np
import pytest

from dydis.stages.representations import compact_dtype, load_codes, save_reps


def relu_units(n: int = 3_000, units: int = 4, dim: int = 32) -> np.ndarray:
    """Feature-extractor-like units (n, N, D): ReLU outputs, half of them zero, float32."""
    rng = np.random.default_rng(0)
    return np.maximum(rng.normal(0, 2, size=(n, units, dim)), 0).astype(np.float32)


def test_units_are_stored_as_float16_within_its_rounding(tmp_path):
    units, scalars = relu_units(), np.random.default_rng(1).normal(size=(3_000, 4)).astype(np.float32)
    assert save_reps(tmp_path / "reps.npz", units, scalars) == "float16"
    np.savez(tmp_path / "float32.npz", codes=units, scalars=scalars)  # what eval-metrics stored before
    with np.load(tmp_path / "reps.npz") as reps:
        codes, stored_scalars = reps["codes"], reps["scalars"]
    assert codes.dtype == np.float16 and stored_scalars.dtype == np.float32
    np.testing.assert_array_equal(stored_scalars, scalars)
    scale = np.abs(units).max(axis=0)
    assert np.all(np.abs(codes.astype(np.float32) - units) <= scale * 2.0 ** -11)
    assert not np.array_equal(codes.astype(np.float32), units)  # rounded: the metrics must not read it
    size, before = (tmp_path / "reps.npz").stat().st_size, (tmp_path / "float32.npz").stat().st_size
    assert size == pytest.approx(units.size * 2 + scalars.size * 4, abs=1_000)  # + npz headers
    assert size < 0.53 * before


@pytest.mark.parametrize("value, why", [(7e4, "beyond float16's largest, 65504"), (np.inf, "not finite"),
                                        (np.nan, "not finite"), (1e-6, "a feature below float16's smallest normal")])
def test_values_float16_cannot_hold_keep_float32(tmp_path, value, why):
    units = relu_units()
    if value == 1e-6:
        units[:, 2, 5] = np.linspace(0, 1e-6, len(units))  # one feature of tiny values
    else:
        units[-1, 1, 7] = value  # one value, in the last chunk of the check
    assert compact_dtype(units, chunk_rows=1_000) == np.float32, why
    save_reps(tmp_path / "reps.npz", units, np.zeros((len(units), 4), np.float32))
    with np.load(tmp_path / "reps.npz") as reps:
        np.testing.assert_array_equal(reps["codes"], units)


def test_large_tiny_and_zero_features_fit_float16():
    units = relu_units()
    units[:, 0, 0] = 0.0  # a dead feature
    units[:, 0, 1] = np.linspace(-6e4, 6e4, len(units))  # near float16's largest
    units[:, 0, 2] = np.linspace(0, 1e-3, len(units))  # small, but normal at its largest
    assert compact_dtype(units) == np.float16


def test_a_float16_file_is_read_with_a_warning_and_a_float32_one_as_it_is(tmp_path, dydis_warnings):
    units = relu_units(n=100)
    save_reps(tmp_path / "new.npz", units, units[:, :, 0])
    np.savez(tmp_path / "old.npz", codes=units, scalars=units[:, :, 0])  # an eval-metrics copy before float16
    old = load_codes(tmp_path / "old.npz", 100)
    assert old.dtype == np.float64 and np.array_equal(old, units) and not dydis_warnings.records
    new = load_codes(tmp_path / "new.npz", 100)
    np.testing.assert_array_equal(new, units.astype(np.float16))
    assert "new.npz: the codes are float16" in dydis_warnings.text
    np.testing.assert_array_equal(load_codes(tmp_path / "new.npz", 100, reduce="scalar"), units[:, :, 0])
