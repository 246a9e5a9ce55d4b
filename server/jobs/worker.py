"""The worker: one claimed job, decoded, denoised and encoded in a worker process (:func:`run_job`).

States: ``pending`` -> ``pre-processing`` (claimed) -> ``processing`` (denoise, with progress) ->
``post-processing`` (encode) -> ``completed``; or ``failed`` with an error code.

A worker holds a lease on its job and renews it with every progress update; every write names the
claim (owner and attempt) it belongs to, so only the last claim can finish a job. The output is the
same denoiser the live stream runs, fed the same float samples, so a job equals the stream within
1 LSB. Memory is bounded by the block size, not by the file's length. :func:`run_job` returns a
typed :class:`JobOutcome`; it opens its own store by URL, so it runs in any process (and in a test).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from hushwire.contract.limits import native_rate
from server.backends import open_blob_url
from server.blobs import (
    BLOB_UNAVAILABLE_MSG,
    STORAGE_FULL_MSG,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    is_storage_full,
)
from server.dsp import Denoiser
from server.errors import HushwireError
from server.jobs.names import result_blob as result_blob_name
from server.jobs.probe import open_audio
from server.logs import event, setup_logging
from server.store import POST_PROCESSING, PROCESSING, JobRow, Store

__all__ = ["BLOCK_SECONDS", "JOB_NICE", "JobOutcome", "Outcome", "ready", "run_job", "worker_init"]

log = logging.getLogger("hushwire.jobs")

BLOCK_SECONDS = 1.0          # audio decoded, denoised and encoded per step
PROGRESS_EVERY_S = 0.25      # how often a worker writes progress (and renews its lease)


class Outcome(enum.StrEnum):
    """How :func:`run_job` ended (the value is what the server logs: ``job completed``...)."""

    COMPLETED = "completed"   # the result is stored and the job row says so (and is billed)
    FAILED = "failed"         # the job row says failed, with the error below
    CANCELLED = "cancelled"   # the job was deleted (cancelled) while it ran
    LOST = "lost"             # the claim is no longer this worker's: another claim owns the job


@dataclass(frozen=True)
class JobOutcome:
    outcome: Outcome
    error_code: str | None = None   # for FAILED: the contract code stored in the job
    error_msg: str | None = None


class _Resampler:
    """Streaming resampler (soxr) that is the identity when the rates match."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self._stream = None
        if rate_in != rate_out:
            import soxr

            self._stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(np.ascontiguousarray(x, np.float32), last=last), np.float32)


class _Cancelled(Exception):
    """The job was cancelled (deleted) or its lease went to another worker."""


def _output_format(job: JobRow) -> tuple[str, str]:
    if sf.check_format(job.format, job.subtype):
        return job.format, job.subtype
    return "WAV", "PCM_16"


@functools.lru_cache(maxsize=4)
def _worker_blobs(blob_url: str, data_dir: str) -> BlobStore:
    """The worker process's blob store, made once (an S3 client takes a while to set up)."""
    return open_blob_url(blob_url, Path(data_dir))


def run_job(database: str, blob_url: str, data_dir: str, job_id: str, owner: str, lease_seconds: float,
            attempt: int | None = None) -> JobOutcome:
    """Worker-process entry: decode, denoise, encode one claimed job; returns how it ended.

    ``database`` is the store's URL (or SQLite path); ``owner`` and ``attempt`` name the claim. The
    input is read from a local copy (the blob itself for a local store, a download for S3) and the
    result is written to a temporary file, then committed: it appears whole or not at all."""
    store = Store(database)
    blobs = _worker_blobs(blob_url, data_dir)
    tmp: Path | None = None

    def fail(error: tuple[str, str]) -> bool:
        return store.finish_job(job_id, owner, error=error, attempt=attempt)

    def failed(error: tuple[str, str]) -> JobOutcome:
        # A lost lease means another claim owns the job now: its outcome is that claim's to report.
        return JobOutcome(Outcome.FAILED, *error) if fail(error) else JobOutcome(Outcome.LOST)

    try:
        job = store.get_job(job_id)
        if job is None or job.lease_owner != owner or (attempt is not None and job.attempts != attempt):
            return JobOutcome(Outcome.LOST)
        fmt, subtype = _output_format(job)
        result_blob = result_blob_name(job_id, owner, attempt)
        tmp = blobs.temp_path(result_blob)
        last = time.monotonic()

        def progress(status: str | None, fraction: float | None) -> None:
            if not store.update_job(job_id, owner, lease_seconds, status=status, progress=fraction,
                                    attempt=attempt):
                raise _Cancelled

        rate = native_rate(job.sample_rate)
        denoiser = Denoiser(rate, job.channels, job.attenuation_limit_db)
        to_native = _Resampler(job.sample_rate, rate, job.channels)
        from_native = _Resampler(rate, job.sample_rate, job.channels)
        skip = denoiser.latency_samples  # drop the algorithmic delay: output aligned to the input
        written = 0
        block = max(1, int(BLOCK_SECONDS * job.sample_rate))

        def emit(out: sf.SoundFile, y: np.ndarray) -> None:
            nonlocal skip, written
            if skip:
                cut = min(skip, y.shape[0])
                y, skip = y[cut:], skip - cut
            y = y[: job.frames - written]
            if y.shape[0]:
                out.write(np.clip(y, -1.0, 1.0))
                written += y.shape[0]

        progress(PROCESSING, 0.0)
        event(log, "job processing", job_id=job_id, uid=job.uid, file_name=job.file_name)
        with contextlib.ExitStack() as stack:
            src_path = stack.enter_context(blobs.local_copy(job.upload_blob))
            try:
                src = stack.enter_context(open_audio(src_path))
            except Exception:
                raise HushwireError("INVALID_FILE", "the file could not be decoded") from None
            out = stack.enter_context(sf.SoundFile(str(tmp), "w", job.sample_rate, job.channels, subtype, format=fmt))
            read = 0
            while read < job.frames:
                try:
                    x = src.read(block, dtype="float32", always_2d=True)
                except Exception:
                    raise HushwireError("INVALID_FILE", f"decoding failed after {read / job.sample_rate:.2f} s "
                                        "of audio: the file is damaged or truncated") from None
                if x.shape[0] == 0:
                    break
                read += x.shape[0]
                emit(out, from_native(denoiser.process(to_native(x))))
                if time.monotonic() - last > PROGRESS_EVERY_S:
                    progress(None, min(read / job.frames, 0.99))
                    last = time.monotonic()
            if read < job.frames * 0.999 - 1:
                raise HushwireError("INVALID_FILE", f"the file is truncated: its header declares {job.frames} "
                                    f"frames but only {read} could be decoded")
            empty = np.zeros((0, job.channels), np.float32)
            emit(out, from_native(denoiser.process(to_native(empty, last=True))))
            emit(out, from_native(denoiser.flush(), last=True))
            progress(POST_PROCESSING, 1.0)
            event(log, "job post-processing", job_id=job_id, uid=job.uid, file_name=job.file_name)
            if written < job.frames:  # resampler edge: pad so the result has exactly the input's frames
                out.write(np.zeros((job.frames - written, job.channels), np.float32))
        blobs.commit(tmp, result_blob)
        tmp = None
        if not store.finish_job(job_id, owner, result_blob=result_blob, result_format=fmt, attempt=attempt):
            blobs.delete(result_blob)
            return JobOutcome(Outcome.LOST)
        return JobOutcome(Outcome.COMPLETED)
    except _Cancelled:
        return JobOutcome(Outcome.CANCELLED)
    except BlobNotFound as exc:  # the job was cancelled meanwhile (its blobs go first), or the store lost it
        missing = ("INTERNAL", "the uploaded file is missing from the blob store")
        if fail(missing):
            log.error("job %s: blob %s is missing", job_id, exc)
            return JobOutcome(Outcome.FAILED, *missing)
        return JobOutcome(Outcome.CANCELLED)
    except HushwireError as err:
        return failed((err.code, err.msg))
    except BlobStoreError as exc:  # S3 unreachable or refusing: the operator's to fix, not the file's fault
        log.error("job %s failed: %s", job_id, exc)
        return failed(("SERVICE_UNAVAILABLE", BLOB_UNAVAILABLE_MSG))
    except Exception as exc:  # a full disk, or a bug: fail the job with an id the operator can find in the log
        if is_storage_full(exc, blobs.scratch_dir):
            return failed(("SERVICE_UNAVAILABLE", STORAGE_FULL_MSG))
        incident = uuid.uuid4().hex[:12]
        log.exception("job %s failed (incident %s)", job_id, incident)
        return failed(("INTERNAL", f"internal error (incident {incident}): {type(exc).__name__}"))
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        store.close()


def ready() -> bool:
    """A no-op a new worker process runs to prove it has started (imports included)."""
    return True


# Job workers' niceness (relative to the server): when both want the core, the scheduler gives a
# nice-10 process about a tenth of what a nice-0 one gets, so live streams keep the CPU they need.
JOB_NICE = 10


def worker_init(log_level: str = "info", log_format: str = "text", parent_pid: int | None = None) -> None:
    """Worker processes log like the server, die with it (Linux), leave signals to it, and run at a
    lower CPU priority (``JOB_NICE``): file jobs yield to live streams, which must stay real time,
    yet still get whatever CPU the streams leave (a saturated server still finishes its jobs)."""
    setup_logging(log_level, log_format)
    with contextlib.suppress(OSError):
        os.nice(JOB_NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        # The server died while this worker was starting, before the death signal was armed:
        # nobody would ever stop it (seen as idle workers with parent 1 after SIGKILL tests).
        os._exit(1)
