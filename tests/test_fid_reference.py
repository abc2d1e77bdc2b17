"""FID's reference statistics: computed once, read back the same, never trusted when damaged."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from dydis.metrics.fid import fid, reference_statistics
from dydis.metrics.fid_reference import cached_reference, reference_key

KEY = reference_key(dataset="a" * 64, weights="b" * 64, rows=np.arange(50))


class Features:
    """A feature computation that counts its calls (the Inception pass it stands for)."""

    def __init__(self, n: int, d: int):
        self.features = np.random.default_rng(0).normal(size=(n, d))
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.features


@pytest.mark.parametrize("n, d", [(50, 8), (5, 8)])  # mu and sigma; the features themselves (n < d)
def test_the_second_lookup_reads_the_file_and_gives_the_same_fid(tmp_path, n, d):
    real, generated = Features(n, d), np.random.default_rng(1).normal(0.5, 1.0, size=(6, d))
    first = cached_reference(tmp_path, KEY, real)
    second = cached_reference(tmp_path, KEY, real)
    assert real.calls == 1 and (first.source, second.source) == ("computed", "cache")
    assert second.sha256 == first.sha256 and sorted(second.statistics) == sorted(first.statistics)
    assert fid(second.statistics, generated) == fid(first.statistics, generated) == fid(real.features, generated)
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.npz"]  # no temporary file left behind


def test_the_key_names_dataset_weights_and_images():
    rows = np.arange(50)
    keys = {reference_key(dataset="a" * 64, weights="b" * 64, rows=rows),
            reference_key(dataset="c" * 64, weights="b" * 64, rows=rows),  # another dataset artifact
            reference_key(dataset="a" * 64, weights="d" * 64, rows=rows),  # other weights
            reference_key(dataset="a" * 64, weights="b" * 64, rows=rows[:49]),  # fewer images
            reference_key(dataset="a" * 64, weights="b" * 64, rows=rows + 1)}  # other images
    assert len(keys) == 5 and KEY in keys
    assert reference_key(dataset="a" * 64, weights="b" * 64, rows=list(range(50))) == KEY


def _tamper(path):
    """A sound zip whose sigma is no longer the one its sha256 was stored with."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["sigma"] = arrays["sigma"] * (1 + 1e-12)
    np.savez(path, **arrays)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path):  # in the middle of sigma's data: the zip's CRC-32 no longer matches
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _another_key(path):
    other = reference_key(dataset="e" * 64, weights="b" * 64, rows=np.arange(50))
    cached_reference(path.parent, other, Features(50, 8).__call__)
    path.unlink()
    (path.parent / f"{other}.npz").rename(path)


@pytest.mark.parametrize("damage", [_tamper, _truncate, _flip_a_byte, _another_key,
                                    lambda path: path.write_text("not a zip")])
def test_a_damaged_file_is_computed_again_and_replaced(tmp_path, dydis_warnings, damage):
    real = Features(50, 8)
    first = cached_reference(tmp_path, KEY, real)
    damage(tmp_path / f"{KEY}.npz")
    again = cached_reference(tmp_path, KEY, real)
    assert real.calls == 2 and again.source == "computed" and again.sha256 == first.sha256
    assert "damaged" in dydis_warnings.text and f"{KEY}.npz" in dydis_warnings.text
    np.testing.assert_array_equal(again.statistics["sigma"], reference_statistics(real.features)["sigma"])
    assert cached_reference(tmp_path, KEY, real).source == "cache" and real.calls == 2  # the file was replaced


def test_without_a_directory_nothing_is_stored(tmp_path):
    real = Features(50, 8)
    assert cached_reference(None, KEY, real).source == cached_reference(None, KEY, real).source == "computed"
    assert real.calls == 2


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, dydis_warnings):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    reference = cached_reference(blocked / "fid", KEY, Features(50, 8))
    assert reference.source == "computed" and "not cached" in dydis_warnings.text


def test_the_file_is_an_npz_of_the_statistics(tmp_path):
    reference = cached_reference(tmp_path, KEY, Features(50, 8))
    with zipfile.ZipFile(tmp_path / f"{KEY}.npz") as archive:
        assert sorted(archive.namelist()) == ["key.npy", "mu.npy", "sha256.npy", "sigma.npy"]
    with np.load(tmp_path / f"{KEY}.npz") as npz:
        assert str(npz["key"]) == KEY and str(npz["sha256"]) == reference.sha256
        np.testing.assert_array_equal(npz["mu"], reference.statistics["mu"])
