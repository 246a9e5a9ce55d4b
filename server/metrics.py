"""Prometheus metrics of the server (names are a contract: dashboards and alerts depend on them).

All counting happens in the server process: job outcomes are counted when a worker's result
reaches the parent, so the figures add up however many worker processes there are. Labels are
bounded: codes, paths, states, user and key numbers; never a job id or a raw key.

With ``serve --processes N`` each sibling server process writes its metrics to files that the
parent sums at scrape time (prometheus_client's multiprocess mode, server/group.py): counters and
histograms add up; each gauge says how (``multiprocess_mode``): open streams and headroom add up,
``hushwire_live_full`` is 1 only while every process is full (the group's health), and the
per-process measurements (cost, CPU available, loop lag) carry a ``pid`` label. The job-queue
gauges come from the store, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.store import Store

__all__ = ["METRICS", "GroupCollector", "GroupView", "Metrics", "StoreCollector", "observe_many"]

# Per-chunk processing time: a 20 ms chunk takes ~0.1-1 ms; the budget for real time is the chunk.
_CHUNK_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5)
_RTF_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class StoreCollector(Collector):
    """Job-queue figures read from the store at scrape time (so any replica reports the truth)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, queued, oldest = self._store.job_stats()
        states = GaugeMetricFamily("hushwire_jobs", "Jobs by state.", labels=["state"])
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily("hushwire_jobs_queued", "Jobs waiting to run (pending, not held).",
                                value=queued)
        age = time.time() - oldest if oldest is not None else 0.0
        yield GaugeMetricFamily("hushwire_oldest_pending_job_age_seconds",
                                "Age of the oldest pending job (0 when none).", value=age)
        yield GaugeMetricFamily("hushwire_webhooks_pending",
                                "Job webhooks not delivered yet (due, or waiting to be retried).",
                                value=self._store.webhooks_pending())


class GroupView(Protocol):
    """What :class:`GroupCollector` reads: the parent's view of its sibling processes (server/group.py)."""

    @property
    def serving(self) -> bool: ...

    def states(self) -> dict[str, int]: ...


class GroupCollector(Collector):
    """``serve --processes N``: the parent's own figures of the group, read at scrape time."""

    def __init__(self, view: GroupView) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("hushwire_server_processes", "Server processes of the group (serve --processes) "
                                   "by state: starting, serving, draining, stopped (dead, or not started yet).",
                                   labels=["state"])
        for state, n in self._view.states().items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily("hushwire_ready", "1 while the group is ready (the health mirror's /readyz "
                                "answers 200: at least one process serves, and it is not draining), else 0.",
                                value=1 if self._view.serving else 0)


def observe_many(histogram: Histogram, value: float, n: int) -> None:
    """``n`` observations of ``value`` at the cost of one, exactly as ``n`` calls of ``observe`` count them.

    The live path observes its chunk histograms once per batch: every chunk of a batch has the same
    share of its processing time, and ``observe`` (a lock and a bucket search each) 50 times a second
    per stream was a measurable part of a stream's CPU. prometheus_client has no bulk observe, so this
    adds to the histogram's own values (the same ones ``observe`` adds to, so the exposition and the
    multiprocess mode's files stay the library's); tests/test_metrics.py checks it against ``observe``.
    """
    if n <= 0:
        return
    histogram._sum.inc(value * n)
    for i, bound in enumerate(histogram._upper_bounds):
        if value <= bound:
            histogram._buckets[i].inc(n)
            break


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.streams_open = Gauge("hushwire_streams_open", "Live streams open now.", registry=r,
                                  multiprocess_mode="livesum")
        self.process_streams_open = Gauge("hushwire_process_streams_open", "Live streams open now in this server "
                                          "process (with --processes: one series per process, label pid; "
                                          "shows how evenly connections spread).", registry=r,
                                          multiprocess_mode="liveall")
        self.streams_total = Counter("hushwire_streams", "Live streams opened.", registry=r)
        self.audio_seconds = Counter("hushwire_audio_seconds", "Seconds of audio processed (x channels).",
                                     ["path"], registry=r)
        self.chunk_seconds = Histogram("hushwire_chunk_processing_seconds",
                                       "Time to denoise one stream chunk (its share of its batch).",
                                       buckets=_CHUNK_BUCKETS, registry=r)
        self.batch_chunks = Histogram("hushwire_stream_batch_chunks",
                                      "Stream chunks denoised together in one batch (one per event-loop turn).",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.denoiser_cpu = Counter("hushwire_stream_denoiser_cpu_seconds",
                                    "CPU seconds the live streams' batched denoiser used (the DSP alone: not the "
                                    "codec, gRPC or the servicer).", registry=r)
        self.realtime_factor = Histogram("hushwire_denoiser_realtime_factor",
                                         "Processing time / audio time, per stream chunk.", buckets=_RTF_BUCKETS,
                                         registry=r)
        self.jobs_completed = Counter("hushwire_jobs_completed", "Jobs completed.", registry=r)
        self.jobs_failed = Counter("hushwire_jobs_failed", "Jobs failed.", registry=r)
        self.job_seconds = Histogram("hushwire_job_processing_seconds", "Wall time from claim to finish per job.",
                                     buckets=_JOB_BUCKETS, registry=r)
        self.errors = Counter("hushwire_errors", "Refusals and failures by contract code.", ["code"], registry=r)
        self.billed_seconds = Counter("hushwire_billed_seconds", "Billed seconds (audio x channels) per user.",
                                      ["uid"], registry=r)
        self.key_billed_seconds = Counter("hushwire_key_billed_seconds", "Billed seconds per key.", ["key_id"],
                                          registry=r)
        self.webhook_attempts = Counter("hushwire_webhook_attempts", "Job webhook delivery attempts by outcome "
                                        "(delivered: a 2xx answer; failed: anything else).", ["outcome"],
                                        registry=r)
        self.webhooks_delivered = Counter("hushwire_webhooks_delivered", "Job webhooks delivered.", registry=r)
        self.webhooks_given_up = Counter("hushwire_webhooks_given_up",
                                         "Job webhooks given up (too old, or their job deleted).", registry=r)
        self.webhook_attempt_seconds = Histogram("hushwire_webhook_attempt_seconds",
                                                 "Time of one webhook delivery attempt.",
                                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.streams_refused = Counter("hushwire_streams_refused", "New live streams refused with OVERLOADED, by "
                                       "reason, the hushwire-refused-for trailer's value (load: admission control; "
                                       "cap: --max-streams; users: the group's table of users streaming at once "
                                       "is full).", ["reason"],
                                       registry=r)
        self.live_headroom = Gauge("hushwire_live_headroom_streams", "16 kHz mono streams admission would still "
                                   "take now (-1 per process: measured admission off).", registry=r,
                                   multiprocess_mode="livesum")
        self.live_cost = Gauge("hushwire_live_cost_seconds", "Measured server CPU seconds per second of 16 kHz "
                               "mono live audio (EWMA; the admission's per-stream reservation).", registry=r,
                               multiprocess_mode="liveall")
        self.live_full = Gauge("hushwire_live_full", "1 while new live streams are refused for load "
                               "(health hushwire.v1.Enhancer NOT_SERVING), else 0; with --processes, 1 while every "
                               "process is.", registry=r, multiprocess_mode="livemin")
        self.live_available = Gauge("hushwire_live_cpu_available", "Share of the CPU it asks for that the server "
                                     "process gets (run / (run + runnable wait), EWMA): scales the live budget.",
                                     registry=r, multiprocess_mode="liveall")
        self.loop_lag = Gauge("hushwire_event_loop_lag_seconds", "The event loop's mean lag over the last "
                              "half second.", registry=r, multiprocess_mode="liveall")
        self.ingest_yield = Counter("hushwire_upload_yield_seconds", "Seconds upload ingest waited so that admitted "
                                    "live streams kept the CPU they need (admission's yield_to_live).", registry=r)
        self._store_collector: StoreCollector | None = None

    def bind_store(self, store: Store) -> None:
        if self._store_collector is not None:
            self.registry.unregister(self._store_collector)
        self._store_collector = StoreCollector(store)
        self.registry.register(self._store_collector)

    def streams(self, n: int) -> None:
        """This process's open live streams."""
        self.streams_open.set(n)
        self.process_streams_open.set(n)

    def billed(self, uid: int, key_id: int, seconds: float, path: str) -> None:
        self.audio_seconds.labels(path).inc(seconds)
        self.billed_seconds.labels(str(uid)).inc(seconds)
        self.key_billed_seconds.labels(str(key_id)).inc(seconds)


METRICS = Metrics()
