"""TargetHealth: passive ejection with growing backoff, probation, active thresholds, panic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.model import PassiveHealthConfig
from gateway.upstream.checker import check_request, parse_status_line, status_passes
from gateway.upstream.health import TargetHealth

PASSIVE = PassiveHealthConfig(consecutive_failures=3, base_ejection=10.0, max_ejection=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    count: int = 2, passive: PassiveHealthConfig | None = PASSIVE
) -> tuple[TargetHealth, Clock]:
    clock = Clock()
    return TargetHealth(count, passive, clock), clock


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    health, _ = make()
    health.failed(0)
    health.failed(0)
    health.succeeded(0)
    health.failed(0)
    health.failed(0)
    assert health.usable() == [True, True]
    health.failed(0)
    assert health.usable() == [False, True]
    assert health.is_ejected(0)
    assert health.ejected_for(0) == 10.0


def test_an_ejection_ends_and_a_returning_target_is_on_probation() -> None:
    health, clock = make()
    for _ in range(3):
        health.failed(0)
    clock.now += 10.0
    assert health.usable() == [True, True]
    # On probation: one failure ejects it again, for twice as long.
    health.failed(0)
    assert health.usable() == [False, True]
    assert health.ejected_for(0) == 20.0


def test_a_success_after_return_ends_the_probation() -> None:
    health, clock = make()
    for _ in range(3):
        health.failed(0)
    clock.now += 10.0
    health.succeeded(0)
    health.failed(0)
    health.failed(0)
    assert health.usable() == [True, True]


@pytest.mark.parametrize(
    ("ejections", "length"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 60.0), (5, 60.0), (40, 60.0)],
)
def test_ejections_in_a_row_double_up_to_max_ejection(ejections: int, length: float) -> None:
    health, clock = make()
    for _ in range(ejections):
        for _ in range(3):
            health.failed(0)
        last = health.ejected_for(0)
        clock.now += last
        health.usable()
    assert last == length


def test_a_target_long_back_in_service_starts_over_at_base_ejection() -> None:
    health, clock = make()
    for _ in range(3):
        health.failed(0)
    clock.now += 10.0
    health.succeeded(0)
    clock.now += 61.0  # more than max_ejection since its return
    for _ in range(3):
        health.failed(0)
    assert health.ejected_for(0) == 10.0


def test_panic_mode_uses_every_target_when_none_is_usable() -> None:
    health, clock = make()
    for index in (0, 1):
        for _ in range(3):
            health.failed(index)
    assert health.panic
    assert health.usable() == [True, True]
    assert not health.healthy(0)
    clock.now += 10.0
    assert health.usable() == [True, True]
    assert not health.panic


def test_without_passive_health_failures_never_eject() -> None:
    health, _ = make(passive=None)
    for _ in range(100):
        health.failed(0)
    assert health.usable() == [True, True]


def test_active_thresholds_take_a_target_out_and_bring_it_back() -> None:
    health, _ = make()
    verdicts = [health.checked(0, False, 2, 3) for _ in range(3)]
    assert verdicts == [False, False, True]
    assert health.usable() == [False, True]
    # One pass is not enough with healthy_threshold 2; a failure in between starts over.
    assert not health.checked(0, True, 2, 3)
    assert not health.checked(0, False, 2, 3)
    assert not health.checked(0, True, 2, 3)
    assert health.checked(0, True, 2, 3)
    assert health.usable() == [True, True]


def test_a_target_brought_back_by_its_checks_is_no_longer_ejected() -> None:
    health, _ = make()
    health.checked(0, False, 1, 1)
    for _ in range(3):
        health.failed(1)
    assert health.panic
    health.checked(0, True, 1, 1)
    assert health.usable() == [True, False]


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["ok", "fail", "tick", "check"]))))
def test_usable_is_never_all_false(events: list[tuple[int, str]]) -> None:
    health, clock = make(count=3)
    for index, event in events:
        if event == "ok":
            health.succeeded(index)
        elif event == "fail":
            health.failed(index)
        elif event == "tick":
            clock.now += 7.0
        else:
            health.checked(index, False, 1, 1)
        usable = health.usable()
        assert any(usable)
        assert health.panic == (not any(health.healthy(i) for i in range(3)))


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 2000 OK\r\n", None),
        (b"HTTP/2 200\r\n", None),
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"HTTP/1.1 abc\r\n", None),
        (b"", None),
    ],
)
def test_status_lines(line: bytes, status: int | None) -> None:
    assert parse_status_line(line) == status


def test_expected_status_ranges() -> None:
    expected = ((200, 200), (204, 299))
    assert [status_passes(code, expected) for code in (200, 201, 204, 299, 300, 503)] == [
        True,
        False,
        True,
        True,
        False,
        False,
    ]


def test_the_check_request_closes_and_names_itself() -> None:
    request = check_request("/healthz?deep=1", b"api.internal:8080")
    assert request.startswith(b"GET /healthz?deep=1 HTTP/1.1\r\nHost: api.internal:8080\r\n")
    assert b"\r\nConnection: close\r\n" in request
    assert request.endswith(b"\r\n\r\n")
