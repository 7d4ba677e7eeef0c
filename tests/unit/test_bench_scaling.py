"""loadtests/bench.py's scaling summary: 2-worker / 1-worker ratios, the gateway's over nginx's.

The load-test scripts are not a package: they import each other as top-level modules (`from
targets import ...`), so their directory goes on sys.path as when they run as scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from bench import ratio, scaling_ratios


def test_ratio_divides() -> None:
    assert ratio(30.0, 20.0) == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("numerator", "denominator"), [(None, 1.0), (1.0, None), (1.0, 0.0), (None, None)]
)
def test_ratio_is_none_without_a_usable_denominator(
    numerator: float | None, denominator: float | None
) -> None:
    assert ratio(numerator, denominator) is None


def test_scaling_ratios_per_target_and_relative_to_nginx() -> None:
    summary = scaling_ratios(
        {"nginx": {1: 20_000.0, 2: 32_000.0}, "gateway": {1: 10_000.0, 2: 14_000.0}}
    )
    assert summary["ratio_2w_1w"] == pytest.approx({"nginx": 1.6, "gateway": 1.4})
    assert summary["gateway_vs_nginx"] == pytest.approx(1.4 / 1.6)


def test_scaling_ratios_with_one_target_has_no_relative_figure() -> None:
    summary = scaling_ratios({"gateway": {1: 10_000.0, 2: 15_000.0}})
    assert summary["ratio_2w_1w"] == pytest.approx({"gateway": 1.5})
    assert summary["gateway_vs_nginx"] is None


def test_a_one_worker_run_that_served_nothing_gives_no_ratio() -> None:
    summary = scaling_ratios({"nginx": {1: 20_000.0, 2: 30_000.0}, "gateway": {1: 0.0, 2: 9.0}})
    assert summary["ratio_2w_1w"]["gateway"] is None
    assert summary["gateway_vs_nginx"] is None
