"""The argparse types every command shares: values in range pass, the rest say what was wanted."""

from __future__ import annotations

import argparse
import re

import pytest

from muxbench.argtypes import cpu_list, float_where, number_in, positive_int


@pytest.mark.parametrize("text, value", [("0", 0), ("65535", 65535), (" 80 ", 80)])
def test_number_in_takes_the_bounds_and_what_lies_between(text, value):
    assert number_in(int, 0, 65535)(text) == value


@pytest.mark.parametrize("text, message", [
    ("65536", "must be between 0 and 65535, got 65536"),
    ("-1", "must be between 0 and 65535, got -1"),
    ("http", "not a number: 'http'"),
    ("1.5", "not a number: '1.5'"),
])
def test_number_in_refuses_with_the_range(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        number_in(int, 0, 65535)(text)


@pytest.mark.parametrize("high", [10, None])
@pytest.mark.parametrize("text", ["nan", "inf"])
def test_number_in_refuses_what_is_not_finite(high, text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"got {text}"):
        number_in(float, 0, high)(text)


def test_number_in_without_a_top_is_open_upwards():
    assert number_in(float, 0.5)("1e9") == 1e9
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("must be >= 0.5, got 0.4")):
        number_in(float, 0.5)("0.4")


@pytest.mark.parametrize("text", ["0", "-3", "x", "", "2.0"])
def test_positive_int_refuses_anything_but_a_count(text):
    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive integer"):
        positive_int(text)


def test_positive_int_takes_a_count():
    assert positive_int("1") == 1 and positive_int("20000") == 20000


@pytest.mark.parametrize("text", ["0", "-1", "nan", "abc"])
def test_float_where_refuses_what_fails_the_test_and_what_is_no_number(text):
    positive = float_where(lambda v: v > 0, "must be a positive number")
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be a positive number, got {text}"):
        positive(text)


def test_float_where_takes_what_passes():
    assert float_where(lambda v: 0 < v < 1, "must be between 0 and 1")("0.01") == 0.01


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("3,1", [1, 3]), ("2-4,0", [0, 2, 3, 4]),
                                        ("1,1-2", [1, 2])])
def test_cpu_list_takes_numbers_and_ranges(text, cpus):
    assert cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", ",", "x", "-1", "3-1", "1-", "0,a"])
def test_cpu_list_refuses_what_taskset_would_not_take(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cpu_list(text)
