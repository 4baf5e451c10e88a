"""Latency samples: raw integers on the hot path, statistics and histograms afterwards.

Appending an int to `array('q')` costs ~0.04 µs where an HdrHistogram
`record_value` costs ~0.8 µs, so workers keep every sample raw while the
measurement window is open and only afterwards compute exact percentiles with
numpy and build an HdrHistogram, whose base64 encoding lets histograms from
several workers (or several runs) be added together without loss.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

# Histogram range in nanoseconds: 1 ns .. 1 hour at 3 significant figures.
# hdrh silently drops out-of-range values, so samples are clamped into range.
HDR_LOWEST = 1
HDR_HIGHEST = 3600 * 10**9
HDR_DIGITS = 3

SUMMARY_KEYS = ("p50", "p90", "p99", "p999", "max", "mean", "count")
_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_samples() -> array:
    return array("q")


def as_numpy(chunks: Iterable[bytes | array]) -> np.ndarray:
    """Concatenate raw sample buffers (bytes of array('q') or arrays) into one int64 array."""
    parts = [np.frombuffer(chunk, dtype=np.int64) for chunk in chunks if len(chunk)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def empty_summary() -> dict:
    """Latency keys all null: the workload has no samples of this kind."""
    return dict.fromkeys(SUMMARY_KEYS)


def summarize(values_ns: np.ndarray) -> dict:
    """p50/p90/p99/p99.9/max/mean in microseconds (floats) and the sample count.

    With no samples the statistics are null and the count 0: a run that
    measured nothing must not look like a run that measured zero latency.
    """
    summary = empty_summary()
    summary["count"] = int(values_ns.size)
    if values_ns.size:
        p50, p90, p99, p999 = np.percentile(values_ns, _PERCENTILES)
        summary.update(
            p50=p50 / 1e3, p90=p90 / 1e3, p99=p99 / 1e3, p999=p999 / 1e3,
            max=float(values_ns.max()) / 1e3, mean=float(values_ns.mean()) / 1e3,
        )
    return summary


def _histogram() -> HdrHistogram:
    return HdrHistogram(HDR_LOWEST, HDR_HIGHEST, HDR_DIGITS)


def lowest_equivalent(hist: HdrHistogram, values: np.ndarray) -> np.ndarray:
    """hdrh's `get_lowest_equivalent_value` for a whole array of values >= 1.

    A histogram keeps the top `sub_bucket_half_count_magnitude + 1` bits of
    a value (and nothing below `unit_magnitude`): values that agree there are
    one count in one bucket, indistinguishable once recorded.
    """
    kept = hist.sub_bucket_half_count_magnitude + 1
    bits = np.frexp(values.astype(np.float64))[1]  # bit lengths; exact below 2**53
    shift = np.maximum(bits, kept + hist.unit_magnitude) - kept
    return (values >> shift) << shift


def hdr_encode(values_ns: np.ndarray) -> str | None:
    """Encode samples (ns) as a base64 HdrHistogram; None when there are none."""
    if not values_ns.size:
        return None
    hist = _histogram()
    # Nanosecond samples are nearly all distinct, and hdrh records one value
    # per Python call (~0.8 µs, above): a minute's run would take seconds to encode.
    # Samples that land in one bucket are recorded once, with their count --
    # at most a few thousand calls, and the same histogram to the bit.
    clipped = np.clip(values_ns, HDR_LOWEST, HDR_HIGHEST)
    values, counts = np.unique(lowest_equivalent(hist, clipped), return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)
    return hist.encode().decode("ascii")


def hdr_merge(encoded: Iterable[str | None]) -> str | None:
    """Add encoded histograms together (lossless); None when all are None."""
    present = [item for item in encoded if item]
    if not present:
        return None
    hist = _histogram()
    for item in present:
        hist.decode_and_add(item)
    return hist.encode().decode("ascii")


def hdr_decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded)
