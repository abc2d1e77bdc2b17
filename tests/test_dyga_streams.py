"""Per-unit random streams (``dydis.dyga.streams``)."""

from __future__ import annotations

import torch

from dydis.dyga.streams import UnitStreams


def test_a_units_stream_depends_on_the_seed_and_its_index_only():
    few, many = UnitStreams.seeded(7, 3), UnitStreams.seeded(7, 20)
    torch.testing.assert_close(few.rand(5), many.rows([0, 1, 2]).rand(5), rtol=0, atol=0)
    picked = UnitStreams.seeded(7, [5, 2])  # units 5 and 2 of a larger set, as one process of several
    torch.testing.assert_close(picked.rand(4), UnitStreams.seeded(7, 6).rows([5, 2]).rand(4), rtol=0, atol=0)
    again = UnitStreams.seeded(7, 3).rand(5)
    other_seed = UnitStreams.seeded(8, 3).rand(5)
    assert not torch.equal(again, other_seed)
    assert len(set(again[:, 0].tolist())) == 3  # the units' streams differ


def test_rows_of_one_unit_draw_from_its_stream_in_row_order():
    streams = UnitStreams.seeded(0, 2)
    rows = streams.rows([1, 0, 1, 1]).rand(3)  # three rows from unit 1, one from unit 0
    fresh = UnitStreams.seeded(0, 2)
    torch.testing.assert_close(rows[[1]], fresh.rows([0]).rand(3), rtol=0, atol=0)
    torch.testing.assert_close(rows[[0, 2, 3]], fresh.rows([1]).rand(3, 3)[0], rtol=0, atol=0)
    picks = UnitStreams.seeded(0, 3).multinomial(torch.ones(3, 50), 50)
    assert all(sorted(row) == list(range(50)) for row in picks.tolist())  # without replacement
