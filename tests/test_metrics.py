"""server/metrics.py: a batch's observations counted at once read exactly as one ``observe`` per chunk."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.metrics import observe_many

_BUCKETS = (1e-4, 1e-3, 1e-2, 0.1)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    a, b = CollectorRegistry(), CollectorRegistry()
    return (a, Histogram("h_seconds", "h", buckets=_BUCKETS, registry=a),
            b, Histogram("h_seconds", "h", buckets=_BUCKETS, registry=b))


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_observe_many_equals_observe_n_times() -> None:
    reg_one, one, reg_many, many = _pair()
    for value, n in [(5e-5, 3), (1e-3, 7), (0.05, 1), (7.0, 2), (2e-3, 0)]:  # a bound itself, +Inf, and none
        for _ in range(n):
            one.observe(value)
        observe_many(many, value, n)
    assert _exposition(reg_many) == _exposition(reg_one)
    assert 'h_seconds_bucket{le="0.001"} 10.0' in _exposition(reg_many)
