"""Durations and sizes: the unit is mandatory and the value exact."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.units import (
    DURATION_NEEDS_UNIT,
    DURATION_UNITS,
    SIZE_NEEDS_UNIT,
    SIZE_UNITS,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("0.1s", 0.1),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0s", 0.0),  # zero parses; whether it is allowed is the loader's call per key
        ("007s", 7.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "bytes_"),
    [
        ("512B", 512),
        ("64KiB", 65536),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("1kB", 1000),
        ("2MB", 2_000_000),
        ("1GB", 10**9),
        ("1.5KiB", 1536),
        ("0.5MB", 500_000),
    ],
)
def test_parse_size(text: str, bytes_: int) -> None:
    assert parse_size(text) == bytes_


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", DURATION_NEEDS_UNIT),
        ("1.5", DURATION_NEEDS_UNIT),
        ("-5", DURATION_NEEDS_UNIT),
        (".5", DURATION_NEEDS_UNIT),
        ("5 s", "expected a duration such as '250ms', '5s', '2m' or '1h', got '5 s'"),
        ("5sec", "expected a duration such as '250ms', '5s', '2m' or '1h', got '5sec'"),
        ("5S", "expected a duration such as '250ms', '5s', '2m' or '1h', got '5S'"),
        ("-5s", "expected a duration such as '250ms', '5s', '2m' or '1h', got '-5s'"),
        ("1m30s", "expected a duration such as '250ms', '5s', '2m' or '1h', got '1m30s'"),
        (".5s", "expected a duration such as '250ms', '5s', '2m' or '1h', got '.5s'"),
        ("", "expected a duration such as '250ms', '5s', '2m' or '1h', got ''"),
        ("9" * 400 + "h", f"duration '{'9' * 400}h' is too large"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1024", SIZE_NEEDS_UNIT),
        ("1.5", SIZE_NEEDS_UNIT),
        ("10 MiB", "expected a size such as '512B', '64KiB', '10MiB' or '1GB', got '10 MiB'"),
        ("10mib", "expected a size such as '512B', '64KiB', '10MiB' or '1GB', got '10mib'"),
        ("10Mb", "expected a size such as '512B', '64KiB', '10MiB' or '1GB', got '10Mb'"),
        ("10M", "expected a size such as '512B', '64KiB', '10MiB' or '1GB', got '10M'"),
        ("-1KiB", "expected a size such as '512B', '64KiB', '10MiB' or '1GB', got '-1KiB'"),
        ("1.5B", "size '1.5B' is not a whole number of bytes"),
        ("0.0001KB", "size '0.0001KB' is not a whole number of bytes"),
    ],
)
def test_parse_size_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_size(text)


# A decimal with up to 6 fractional digits, written the way an operator would.
_decimals = st.decimals(
    min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False
)


# Seconds per unit, written independently of the implementation's table.
_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}


def test_duration_units_are_the_documented_ones() -> None:
    assert set(DURATION_UNITS) == set(_SECONDS)


@given(_decimals, st.sampled_from(sorted(_SECONDS)))
def test_duration_round_trip(number: Decimal, unit: str) -> None:
    # Exact decimal arithmetic rounded once to a float: what "1.5s" means.
    assert parse_duration(f"{number:f}{unit}") == float(number * _SECONDS[unit])


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(sorted(SIZE_UNITS)))
def test_size_round_trip(number: int, unit: str) -> None:
    assert parse_size(f"{number}{unit}") == number * SIZE_UNITS[unit]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["KiB", "MiB", "GiB"]))
def test_size_halves_of_binary_units_are_exact(number: int, unit: str) -> None:
    assert parse_size(f"{number}.5{unit}") == number * SIZE_UNITS[unit] + SIZE_UNITS[unit] // 2


_bare_numbers = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda s: "e" not in s),
    _decimals.map(lambda d: f"{d:f}"),
)


@given(_bare_numbers)
def test_bare_numbers_are_always_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(text)
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size(text)
