"""Latency recording after the window: the bucketed HdrHistogram encoding loses nothing."""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.record import HDR_DIGITS, HDR_HIGHEST, HDR_LOWEST, hdr_encode, lowest_equivalent

# Latencies as the generator sees them (ns), from 1 ns to past the histogram's
# top (clamped there), with ties and powers of two -- the bucket edges.
samples = st.lists(
    st.one_of(st.integers(1, 4 * HDR_HIGHEST),
              st.integers(0, 42).map(lambda k: 2**k),
              st.integers(1, 42).map(lambda k: 2**k - 1)),
    min_size=1, max_size=300)


def one_by_one(values: list[int]) -> str:
    """The reference: every sample recorded through hdrh's own API."""
    hist = HdrHistogram(HDR_LOWEST, HDR_HIGHEST, HDR_DIGITS)
    for value in values:
        hist.record_value(min(max(value, HDR_LOWEST), HDR_HIGHEST))
    return hist.encode().decode("ascii")


@settings(max_examples=300, deadline=None)
@given(samples)
def test_lowest_equivalent_is_hdrhs(values: list[int]) -> None:
    hist = HdrHistogram(HDR_LOWEST, HDR_HIGHEST, HDR_DIGITS)
    clipped = [min(value, HDR_HIGHEST) for value in values]
    got = lowest_equivalent(hist, np.array(clipped, dtype=np.int64)).tolist()
    assert got == [hist.get_lowest_equivalent_value(value) for value in clipped]


@settings(max_examples=200, deadline=None)
@given(samples)
def test_encoding_is_the_one_by_one_histogram(values: list[int]) -> None:
    assert hdr_encode(np.array(values, dtype=np.int64)) == one_by_one(values)


def test_a_million_samples_are_every_one_counted() -> None:
    values = np.random.default_rng(1).integers(10_000, 5_000_000, 1_000_000)
    decoded = HdrHistogram.decode(hdr_encode(values))
    assert decoded.get_total_count() == values.size
    assert decoded.values_are_equivalent(decoded.get_max_value(), int(values.max()))
    assert decoded.values_are_equivalent(decoded.get_min_value(), int(values.min()))
