"""The file-job pipeline: header checks at upload, the worker that denoises, and the runner.

States: ``pending`` -> ``pre-processing`` (full decode, checks) -> ``processing`` (denoise, with
progress) -> ``post-processing`` (encode) -> ``completed``; or ``failed`` with an error code.

Work runs in worker processes (:class:`JobRunner` keeps a pool, one per core by default), never on
the server's event loop. A worker holds a lease on its job and renews it with every progress
update; a job whose lease expired (its worker, or its whole replica, died) is claimed again, by any
replica that shares the database. Workers open the store by its URL, and every write names the
claim (owner and attempt) it belongs to, so only the last claim can finish a job. The output is the same
denoiser the live stream runs, fed the same float samples, so a job equals the stream within 1 LSB.
Memory is bounded by the block size, not by the file's length.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from hushwire.contract.limits import MAX_CHANNELS, MAX_FILE_RATE_HZ, MIN_FILE_RATE_HZ, native_rate
from server.blobs import (
    BLOB_UNAVAILABLE_MSG,
    STORAGE_FULL_MSG,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    is_storage_full,
    open_blobs,
)
from server.dsp import Denoiser
from server.errors import HushwireError
from server.logs import event, setup_logging
from server.metrics import METRICS
from server.store import COMPLETED, FAILED, POST_PROCESSING, PROCESSING, JobRow, Store, StoreUnavailable

__all__ = ["BLOCK_SECONDS", "JobRunner", "Probe", "content_type", "new_job_id", "probe", "result_name", "run_job"]

log = logging.getLogger("hushwire.jobs")

BLOCK_SECONDS = 1.0          # audio decoded, denoised and encoded per step
PROGRESS_EVERY_S = 0.25      # how often a worker writes progress (and renews its lease)
MAX_ATTEMPTS = 3             # leases a job may use before it fails (a file that kills workers)
# Sample formats accepted: 8/16/24/32-bit integer, 32/64-bit float, and compressed codecs.
ACCEPTED_SUBTYPES = {
    "PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE",
    "VORBIS", "OPUS", "MPEG_LAYER_III", "MPEG_LAYER_II", "MPEG_LAYER_I",
}
# libsndfile's frame count for a stream that does not declare its length: a FLAC whose STREAMINFO
# says total_samples 0 ("unknown", which the FLAC format allows, e.g. from an encoder writing to a pipe).
UNKNOWN_FRAMES = 2**63 - 1
COUNT_BLOCK_FRAMES = 1 << 16   # frames decoded per read while counting an undeclared length
_SHORT_DATA = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_CONTENT_TYPES = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg",
                  "AIFF": "audio/aiff", "W64": "audio/x-w64", "RF64": "audio/wav", "CAF": "audio/x-caf"}
_EXTENSIONS = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3", "AIFF": "aiff", "W64": "w64",
               "RF64": "wav", "CAF": "caf"}


def new_job_id() -> str:
    """A UUID4's 16 bytes in URL-safe base64 without padding (22 characters), never starting with
    ``-`` or ``_``: one id in 64 did, and ``hushwire jobs get -Mj...`` reads as an option."""
    while True:
        job_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if job_id[0].isalnum():
            return job_id


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES.get(fmt, "application/octet-stream")


def result_name(file_name: str, fmt: str) -> str:
    stem = Path(file_name).stem or "audio"
    return f"{stem}_enhanced.{_EXTENSIONS.get(fmt, 'wav')}"


@dataclass(frozen=True)
class Probe:
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int


def _invalid(msg: str) -> HushwireError:
    return HushwireError("INVALID_FILE", msg)


def probe(path: Path, max_seconds: float) -> Probe:
    """Check an upload's header (docs/design.md, "Checking uploads"); raise INVALID_FILE / FILE_TOO_LARGE."""
    size = path.stat().st_size
    if size == 0:
        raise _invalid("the file is empty")
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile's errors for non-audio input come in several types
        raise _invalid("not a readable audio file (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...)") from None
    if not MIN_FILE_RATE_HZ <= info.samplerate <= MAX_FILE_RATE_HZ:
        raise _invalid(f"sample rate {info.samplerate} Hz is outside {MIN_FILE_RATE_HZ}-{MAX_FILE_RATE_HZ} Hz")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise _invalid(f"{info.channels} channels; 1 to {MAX_CHANNELS} are supported")
    if info.subtype not in ACCEPTED_SUBTYPES:
        raise _invalid(f"sample format {info.subtype} is not supported (8/16/24/32-bit integer, 32/64-bit float)")
    frames = int(info.frames)
    if frames == UNKNOWN_FRAMES:
        frames = _count_frames(path, info.samplerate, max_seconds)
    if frames < 1:
        raise _invalid("the file has no audio frames")
    if info.format in ("WAV", "W64", "RF64", "AIFF"):
        # libsndfile trims a short data chunk silently but notes it in its header log.
        m = _SHORT_DATA.search(info.extra_info)
        if m and int(m.group(1)) > int(m.group(2)):
            raise _invalid(f"the header declares {m.group(1)} bytes of audio data but the file holds {m.group(2)}")
    seconds = frames / info.samplerate
    if seconds > max_seconds:
        raise HushwireError("FILE_TOO_LARGE", f"{seconds:.0f} s of audio is over the limit of {max_seconds:.0f} s")
    return Probe(info.format, info.subtype, int(info.samplerate), int(info.channels), frames)


class _Stream(sf.SoundFile):
    """A file read front to back only. soundfile tells and seeks around every read of a seekable file,
    and libsndfile cannot seek in a FLAC of undeclared length (``psf_fseek() failed`` at its end)."""

    def seekable(self) -> bool:
        return False


def open_audio(path: Path) -> sf.SoundFile:
    """Open an upload for decoding; one of undeclared length (:data:`UNKNOWN_FRAMES`) as a stream."""
    f = sf.SoundFile(str(path))
    if f.frames != UNKNOWN_FRAMES:
        return f
    f.close()
    return _Stream(str(path))


def _count_frames(path: Path, rate: int, max_seconds: float) -> int:
    """The length of a file that does not declare it, by decoding it, and the duration limit enforced
    while decoding: the count stops as soon as it passes the limit. The upload's byte limit bounds the
    work (FLAC decodes at hundreds of times real time); the job's billed seconds need the length."""
    limit = int(max_seconds * rate)
    frames = 0
    try:
        with open_audio(path) as f:
            while block := f.read(COUNT_BLOCK_FRAMES, dtype="int16", always_2d=True).shape[0]:
                frames += block
                if frames > limit:
                    raise HushwireError("FILE_TOO_LARGE", f"over {max_seconds:.0f} s of audio, the limit (the file "
                                        "does not declare its length; it was measured while decoding)")
    except HushwireError:
        raise
    except Exception:   # libsndfile's decoding errors come in several types
        raise _invalid(f"decoding failed after {frames / rate:.2f} s of audio: the file is damaged or "
                       "truncated") from None
    return frames


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
    return open_blobs(blob_url, Path(data_dir))


def run_job(database: str, blob_url: str, data_dir: str, job_id: str, owner: str, lease_seconds: float,
            attempt: int | None = None) -> str:
    """Worker-process entry: decode, denoise, encode one claimed job. Returns the final status.

    ``database`` is the store's URL (or SQLite path); ``owner`` and ``attempt`` name the claim. The
    input is read from a local copy (the blob itself for a local store, a download for S3) and the
    result is written to a temporary file, then committed: it appears whole or not at all."""
    store = Store(database)
    blobs = _worker_blobs(blob_url, data_dir)
    tmp: Path | None = None
    try:
        job = store.get_job(job_id)
        if job is None or job.lease_owner != owner or (attempt is not None and job.attempts != attempt):
            return "lost"
        fmt, subtype = _output_format(job)
        result_blob = f"results/{job_id}-{owner}" + (f"-{attempt}" if attempt is not None else "")
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
            return "lost"
        return COMPLETED
    except _Cancelled:
        return "cancelled"
    except BlobNotFound as exc:  # the job was cancelled meanwhile (its blobs go first), or the store lost it
        if store.finish_job(job_id, owner, error=("INTERNAL", "the uploaded file is missing from the blob store"),
                            attempt=attempt):
            logging.getLogger("hushwire.jobs").error("job %s: blob %s is missing", job_id, exc)
            return FAILED
        return "cancelled"
    except HushwireError as err:
        store.finish_job(job_id, owner, error=(err.code, err.msg), attempt=attempt)
        return FAILED
    except BlobStoreError as exc:  # S3 unreachable or refusing: the operator's to fix, not the file's fault
        logging.getLogger("hushwire.jobs").error("job %s failed: %s", job_id, exc)
        store.finish_job(job_id, owner, error=("SERVICE_UNAVAILABLE", BLOB_UNAVAILABLE_MSG), attempt=attempt)
        return FAILED
    except Exception as exc:  # a full disk, or a bug: fail the job with an id the operator can find in the log
        if is_storage_full(exc, blobs.scratch_dir):
            store.finish_job(job_id, owner, error=("SERVICE_UNAVAILABLE", STORAGE_FULL_MSG), attempt=attempt)
            return FAILED
        incident = uuid.uuid4().hex[:12]
        logging.getLogger("hushwire.jobs").exception("job %s failed (incident %s)", job_id, incident)
        msg = f"internal error (incident {incident}): {type(exc).__name__}"
        store.finish_job(job_id, owner, error=("INTERNAL", msg), attempt=attempt)
        return FAILED
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        store.close()


def _ready() -> bool:
    return True


def _worker_init(log_level: str = "info", log_format: str = "text", parent_pid: int | None = None) -> None:
    """Worker processes log like the server, die with it (Linux), and leave signals to it."""
    setup_logging(log_level, log_format)
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


class JobRunner:
    """Claims runnable jobs and runs them in a pool of worker processes."""

    def __init__(self, store: Store, database: str | Path, blobs: BlobStore, data_dir: Path, workers: int | None,
                 lease_seconds: float, requeue_on_start: bool = True, log_level: str = "info",
                 log_format: str = "text") -> None:
        """``database`` is what worker processes open: the store's URL (or its SQLite path)."""
        self._log_level, self._log_format = log_level, log_format
        self._store = store
        self._database = str(database)
        self._blob_url, self._data_dir = blobs.url, str(data_dir)  # workers reopen the same store
        # 0 workers: a replica that takes jobs in and serves them but leaves the work to its peers.
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self._lease = lease_seconds
        self._requeue_on_start = requeue_on_start
        self.owner = uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._running: set[asyncio.Future[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._stopping = False
        self._store_down = False

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(self._log_level, self._log_format, os.getpid()))

    async def warm_up(self) -> None:
        """Start every worker process (imports included) before the server reports SERVING."""
        if self._pool is None:  # no workers
            return
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ready) for _ in range(self.workers)))

    async def start(self) -> None:
        if self._requeue_on_start:  # the embedded store belongs to this server alone
            n = self._store.requeue()
            if n:
                event(log, "jobs requeued", count=n, reason="unfinished at the previous stop")
        self._pool = self._new_pool() if self.workers else None
        self._task = asyncio.create_task(self._loop())

    def poke(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            while len(self._running) < self.workers and not self._stopping:
                try:
                    job = self._store.claim_next(self.owner, self._lease, MAX_ATTEMPTS)
                except StoreUnavailable as exc:  # keep polling: the loop must outlive a database restart
                    if not self._store_down:
                        event(log, "cannot claim jobs", level=logging.ERROR, error=str(exc))
                    self._store_down = True
                    break
                if self._store_down:
                    event(log, "claiming jobs again")
                    self._store_down = False
                if job is None:
                    break
                assert self._pool is not None
                event(log, "job pre-processing", job_id=job.job_id, uid=job.uid, file_name=job.file_name,
                      attempt=job.attempts)
                started = time.monotonic()
                fut = loop.run_in_executor(self._pool, run_job, self._database, self._blob_url, self._data_dir,
                                           job.job_id, self.owner, self._lease, job.attempts)
                self._running.add(fut)
                fut.add_done_callback(functools.partial(self._done, job=job, started=started))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except TimeoutError:
                pass

    def _done(self, fut: asyncio.Future[str], *, job: JobRow, started: float) -> None:
        self._running.discard(fut)
        try:
            status = fut.result()
            fields: dict[str, Any] = {"job_id": job.job_id, "uid": job.uid, "file_name": job.file_name,
                                         "seconds": round(time.monotonic() - started, 3)}
            if status == COMPLETED:
                METRICS.jobs_completed.inc()
                METRICS.job_seconds.observe(time.monotonic() - started)
                METRICS.billed(job.uid, job.key_id, job.billed_seconds, "job")
                fields["billed_seconds"] = round(job.billed_seconds, 3)
            elif status == FAILED:
                METRICS.jobs_failed.inc()
                METRICS.job_seconds.observe(time.monotonic() - started)
                row = self._store.get_job(job.job_id)
                code = row.error_code if row and row.error_code else "INTERNAL"
                METRICS.errors.labels(code).inc()
                fields.update(error_code=code, error_msg=row.error_msg if row else "")
            event(log, f"job {status}", **fields)
        except concurrent.futures.process.BrokenProcessPool:
            if not self._stopping:
                event(log, "worker died; restarting the pool", level=logging.ERROR, job_id=job.job_id)
                with contextlib.suppress(StoreUnavailable):  # else the leases expire
                    self._store.requeue(self.owner)
                self._pool = self._new_pool()
        except Exception:
            log.exception("job %s: runner error", job.job_id)
        self.poke()

    async def stop(self) -> None:
        """Stop claiming, end the workers, and put their jobs back in the queue."""
        self._stopping = True
        self.poke()
        if self._task is not None:
            await self._task
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            n = self._store.requeue(self.owner)
        except StoreUnavailable as exc:  # the leases expire instead, and another replica takes the jobs
            event(log, "cannot requeue jobs", level=logging.ERROR, error=str(exc))
            return
        if n:
            event(log, "jobs requeued", count=n, reason="server stopping")
