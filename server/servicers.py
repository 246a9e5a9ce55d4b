"""gRPC servicers: unpack requests, call the domain code, map its errors to a status. Nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc._cython import cygrpc

from hushwire.contract.job_status import STATUS_PROTO
from hushwire.contract.metadata import RESULT_TOKEN_KEY, SLOW_CONSUMER_SECONDS_KEY
from hushwire.contract.rest import job_to_dict, result_url
from hushwire.settings import default
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from server import store as store_mod
from server.auth import current_principal, maybe_principal
from server.blobs import BlobNotFound, BlobStore
from server.connections import TOKEN_CALLER, Connections, reset_call
from server.errors import HushwireError, abort_with, quote_input
from server.jobs import (
    IDEMPOTENCY_TTL_SECONDS,
    JobRunner,
    Submitter,
    UploadSpec,
    audio_quota_msg,
    check_attenuation_limit,
    content_type,
    result_name,
)
from server.logs import event
from server.metrics import METRICS
from server.rpc import rpc_errors
from server.signing import Signer
from server.store import AsyncStore, JobRow, StoreUnavailable
from server.store.webhooks import OUTBOX_PENDING, OutboxRow, WebhookSecrets
from server.streams import DenoiserPools, StreamBatcher, StreamRegistry, StreamSession
from server.tls import peer_subject
from server.watchdog import Watchdog
from server.webhooks import ROTATION_GRACE_S

__all__ = ["AccountServicer", "EnhancerServicer", "JobsServicer", "StreamTimeouts"]

log = logging.getLogger("hushwire.server")

# A stream must send its config this soon after opening, or it is ended (it holds a slot meanwhile).
CONFIG_TIMEOUT_SECONDS = 10.0
# How long a refused stream's config is waited for before the refusal goes out anyway.
REFUSAL_READ_SECONDS = 1.0
# How long a stream's final status may wait to reach the client before the call is reset. The status
# travels behind the response data already queued; a client that reads nothing never lets it through.
STATUS_FLUSH_SECONDS = 5.0


# What a stream's watchdog waits for (server/watchdog.py).
_READ, _WRITE = "request", "response"


@dataclass(frozen=True)
class StreamTimeouts:
    """The live streams' clocks (server settings, see server/config.py)."""

    slow_consumer_s: float = default("slow_consumer_seconds")   # no response taken for this long: SLOW_CONSUMER
    download_idle_s: float = default("download_idle_seconds")   # a download whose client takes nothing: the same
    idle_s: float = default("stream_idle_seconds")   # no request (audio or update) for this long: REQUEST_TIMEOUT
    config_s: float = CONFIG_TIMEOUT_SECONDS
    flush_s: float = STATUS_FLUSH_SECONDS


async def end_call(context: grpc.aio.ServicerContext, err: HushwireError, uid: int | None, flush_s: float,
                   connections: Connections | None, what: str) -> None:
    """End the call with ``err``'s status. The status queues behind the responses not yet taken: if
    it has not reached the client within ``flush_s``, the call's HTTP/2 stream is reset, which carries
    the status past flow control, and grpc frees its buffers for it (server/connections.py); this
    returns either way, so the handler ends and frees what it holds. ``uid``: the caller's user (None:
    nobody's, a download by result token)."""
    try:
        async with asyncio.timeout(flush_s):
            await abort_with(context, err)   # raises grpc's AbortError once the status is sent
    except TimeoutError:
        peer = context.peer()
        # The client gets this status with the reset, without the trailer: the code leads the text.
        if reset_call(context, err.grpc_status, f"{err.code}: {err.msg} (the {what} was reset)"):
            reset = "stream"
        elif connections is not None and connections.close_for(peer, TOKEN_CALLER if uid is None else uid):
            reset = "connection"
        else:
            reset = "none"
        event(log, f"{what} reset", level=logging.WARNING, uid=uid, code=err.code, peer=peer, reset=reset,
              why=f"its {err.code} status did not reach the client within {flush_s:g} s")


# grpc's error for a failed batch of core operations (not exported by grpc.aio): a write fails with it
# when the client cancelled the call while the write was under way.
_BATCH_FAILED: type[Exception] = cygrpc.ExecuteBatchError


async def _send(context: grpc.aio.ServicerContext, message: object, what: str) -> None:
    """``context.write`` on a call whose client may cancel it at any moment. A write under way when the
    client cancels fails before grpc cancels the handler, and grpc would log that failure as an ERROR
    with a traceback (162 in one red-team session): log one INFO line instead and end the handler as
    cancelled, which grpc takes quietly, as the client's doing."""
    try:
        await context.write(message)
    except _BATCH_FAILED:
        _went_away(context, what)


def _went_away(context: grpc.aio.ServicerContext, what: str) -> NoReturn:
    """A write failed because the client cancelled the call (see :func:`_send`)."""
    event(log, "client went away during a write", what=what, peer=context.peer())
    raise asyncio.CancelledError from None


@dataclass
class _StreamStats:
    chunks: int = 0
    processing_s: float = 0.0
    max_processing_s: float = 0.0


class EnhancerServicer(enhancer_pb2_grpc.EnhancerServicer):
    def __init__(self, registry: StreamRegistry, store: AsyncStore, batch_window_s: float = 0.0,
                 max_audio_seconds_per_day: float = math.inf, timeouts: StreamTimeouts | None = None,
                 connections: Connections | None = None) -> None:
        self._registry = registry
        self._admission = registry.admission
        self._store = store
        self._pools = DenoiserPools()
        self._batcher = StreamBatcher(lambda: registry.live, batch_window_s)
        self._max_audio_s = max_audio_seconds_per_day
        self._timeouts = timeouts or StreamTimeouts()
        self._connections = connections

    @rpc_errors
    async def StreamEnhance(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[enhancer_pb2.StreamEnhanceRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        principal = current_principal()
        started = time.monotonic()
        stats = _StreamStats()
        session: StreamSession | None = None
        watch: Watchdog | None = None
        try:
            try:
                self._registry.add(task, principal.uid)
            except HushwireError:
                await self._take_config(context)
                raise
            # The daily audio quota is checked when a stream opens; an open stream is never cut (its
            # seconds count when it closes).
            if (await self._store.usage_today(principal.uid))[1] >= self._max_audio_s:
                raise HushwireError("RATE_LIMITED", audio_quota_msg(self._max_audio_s))
            watch = Watchdog(task, min(self._timeouts.idle_s, self._timeouts.slow_consumer_s))
            session = await self._open(context, watch)
            if session is not None:
                METRICS.streams_total.inc()
                event(log, "stream opened", uid=principal.uid, key_id=principal.key_id,
                      rate=session.sample_rate_hz, channels=session.channels, encoding=session.encoding,
                      **_client_subject(context))
                await self._run(context, session, stats, watch)
        except HushwireError as err:
            await self._end(context, err, principal.uid)
        except asyncio.CancelledError:
            if watch is not None and watch.expired is not None:   # a wait outlasted its clock
                task.uncancel()
                await self._end(context, self._expired(*watch.expired), principal.uid)
            elif not self._registry.shutting_down:
                raise
            else:
                await self._end(context, HushwireError("SERVICE_UNAVAILABLE", "server shutting down"),
                                principal.uid)
        finally:
            if watch is not None:
                watch.close()
            self._registry.discard(task)
            if session is not None:
                session.close()
                await self._closed(session, stats, principal.uid, principal.key_id, time.monotonic() - started)

    async def _take_config(self, context: grpc.aio.ServicerContext) -> None:
        """Before refusing a stream at once, read its first message (which a client sends right away).
        A status sent while the client's config is still on its way crosses the client's write, and
        grpc's client then reports INTERNAL "Internal error from Core" without the error code (seen in
        about 1 of 5 bursts in tests/test_admission.py) instead of the refusal."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.read(), REFUSAL_READ_SECONDS)

    async def _end(self, context: grpc.aio.ServicerContext, err: HushwireError, uid: int) -> None:
        await end_call(context, err, uid, self._timeouts.flush_s, self._connections, "stream")

    async def _closed(self, session: StreamSession, stats: _StreamStats, uid: int, key_id: int, seconds: float
                      ) -> None:
        billed = session.frames_in / session.sample_rate_hz * session.channels
        METRICS.billed(uid, key_id, billed, "stream")
        event(log, "stream closed", uid=uid, key_id=key_id, rate=session.sample_rate_hz,
              channels=session.channels, duration_s=round(seconds, 3), audio_s=round(billed / session.channels, 3),
              chunks=stats.chunks, frames_in=session.frames_in, frames_out=session.frames_out,
              mean_processing_ms=round(1000 * stats.processing_s / max(stats.chunks, 1), 3),
              max_processing_ms=round(1000 * stats.max_processing_s, 3))
        # Before the call's status goes out, so the stream's seconds count against the daily audio
        # quota before its client can open the next one. Awaited: a slow database delays this
        # stream's last status (at most the store timeout), never the event loop.
        try:
            await self._store.record_stream(key_id, uid, billed)
        except StoreUnavailable as exc:  # the metrics counted it; the database's usage table misses it
            event(log, "stream usage not recorded", level=logging.ERROR, uid=uid, key_id=key_id,
                  billed_seconds=round(billed, 3), error=str(exc))

    async def _open(self, context: grpc.aio.ServicerContext, watch: Watchdog) -> StreamSession | None:
        try:
            first = await asyncio.wait_for(context.read(), self._timeouts.config_s)
        except TimeoutError:
            raise HushwireError("REQUEST_TIMEOUT", f"no config within {self._timeouts.config_s:g} s") from None
        if first is grpc.aio.EOF:
            return None
        if first.WhichOneof("msg") != "config":
            raise HushwireError("INVALID_ARGUMENT", "the first message must be the config")
        cfg = first.config
        session = StreamSession(
            cfg.sample_rate_hz,
            cfg.channels,
            cfg.encoding,
            cfg.attenuation_limit_db if cfg.HasField("attenuation_limit_db") else None,
            self._pools,
        )
        task = asyncio.current_task()
        assert task is not None
        try:
            self._registry.configured(task, session.weight)   # its reservation, now that its rate is known
            # With the first response: how long this server waits for a client that reads nothing, so
            # the client library can tell that end from a lost server (hushwire.contract.metadata).
            await context.send_initial_metadata(((SLOW_CONSUMER_SECONDS_KEY, f"{self._timeouts.slow_consumer_s:g}"),))
            await self._write(context, enhancer_pb2.StreamEnhanceResponse(
                algorithmic_delay_samples=session.delay_samples), watch)
        except BaseException:   # refused, or the client left before the first response: free its rows
            session.close()
            raise
        return session

    async def _run(self, context: grpc.aio.ServicerContext, session: StreamSession, stats: _StreamStats,
                   watch: Watchdog) -> None:
        """The per-chunk path, 50 times a second per stream: kept to what each chunk needs. The clocks
        are the stream's watchdog (no timer per wait); the codec and the chunk histograms run once per
        batch (server/streams.py)."""
        idle_s, slow_s = self._timeouts.idle_s, self._timeouts.slow_consumer_s
        admission = self._admission
        weighted_s_per_byte = session.weight / (session.frame_bytes * session.sample_rate_hz)
        response = enhancer_pb2.StreamEnhanceResponse
        submit, read, write, eof = self._batcher.submit, context.read, context.write, grpc.aio.EOF
        while True:
            watch.begin(idle_s, _READ)   # any request is activity, an update too
            try:
                req = await read()
            finally:
                watch.end()
            if req is eof:
                break
            kind = req.WhichOneof("msg")
            if kind == "audio":
                data = req.audio  # each read of a bytes field makes a new bytes object
                # The batch's future, awaited here (not through a coroutine): one frame less per chunk.
                audio, vp, dt = await submit(session, data)
                stats.chunks += 1
                stats.processing_s += dt
                if dt > stats.max_processing_s:
                    stats.max_processing_s = dt
                if admission is not None:
                    admission.audio(len(data) * weighted_s_per_byte)
                watch.begin(slow_s, _WRITE)
                try:   # _send, inline
                    await write(response(audio=audio, voice_probability=vp))
                except _BATCH_FAILED:
                    _went_away(context, "stream")
                finally:
                    watch.end()
            elif kind == "update":
                up = req.update
                session.update(
                    up.attenuation_limit_db if up.HasField("attenuation_limit_db") else None,
                    up.bypass if up.HasField("bypass") else None,
                )
            elif kind == "config":
                raise HushwireError("INVALID_ARGUMENT", "the config was already sent: send it once, first")
            else:
                raise HushwireError("INVALID_ARGUMENT", "empty request: set config, audio or update")
        await self._write(context, enhancer_pb2.StreamEnhanceResponse(audio=session.flush()), watch)

    async def _write(self, context: grpc.aio.ServicerContext, response: enhancer_pb2.StreamEnhanceResponse,
                     watch: Watchdog) -> None:
        watch.begin(self._timeouts.slow_consumer_s, _WRITE)
        try:
            await _send(context, response, "stream")
        finally:
            watch.end()

    def _expired(self, what: str, seconds: float) -> HushwireError:
        """The error that ends a stream whose ``what`` wait outlasted ``seconds``."""
        if what == _WRITE:
            return HushwireError("SLOW_CONSUMER", f"the client read no response for {seconds:g} s")
        return HushwireError("REQUEST_TIMEOUT", f"no audio or update for {seconds:g} s: an idle stream is ended "
                             "(send audio, or an update, to keep it)")


# -- jobs ------------------------------------------------------------------------------------------

DOWNLOAD_CHUNK_BYTES = 256 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
MAX_RENEW_JOBS = 1000   # job ids per RenewHolds or StartJobs call (a request holds at most 32 files)
MAX_IDEMPOTENT_REPLY_BYTES = 64 * 1024   # 32 job ids under long field names fit many times over


def _client_subject(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """``{"client_subject": ...}`` for a mutual-TLS caller (its certificate's subject), else nothing."""
    subject = peer_subject(context)
    return {} if subject is None else {"client_subject": subject}


def _options_limit(options: jobs_pb2.JobOptions) -> float | None:
    return check_attenuation_limit(options.attenuation_limit_db if options.HasField("attenuation_limit_db") else None)


async def _upload_chunks(context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """The chunks that follow the JobSpec."""
    while (req := await context.read()) is not grpc.aio.EOF:
        if req.WhichOneof("msg") != "chunk":
            raise HushwireError("INVALID_REQUEST", "after the JobSpec, send only chunks")
        yield req.chunk


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(self, store: AsyncStore, blobs: BlobStore, runner: JobRunner, signer: Signer,
                 submitter: Submitter, timeouts: StreamTimeouts | None = None,
                 connections: Connections | None = None) -> None:
        self._store = store
        self._blobs = blobs
        self._runner = runner
        self._signer = signer
        self._submitter = submitter
        self._timeouts = timeouts or StreamTimeouts()
        self._connections = connections

    def status_json(self, job_id: str, public_url: str | None) -> dict[str, object] | None:
        """The job's ``/stat/jobs`` JSON, ``result`` signed now under ``public_url`` (webhook bodies);
        None when the job is gone. Blocks: the webhook deliverer calls it in a thread."""
        job = self._store.sync.get_job(job_id)
        if job is None:
            return None
        msg = self._to_proto(job, with_callback=False)
        url = result_url(public_url, job.job_id, msg.result.expires, msg.result.sig) \
            if public_url and msg.HasField("result") else None
        return job_to_dict(msg, url)

    async def _job_proto(self, job: JobRow) -> jobs_pb2.Job:
        """The job as the client sees it, with its callback's delivery state read from the store."""
        outbox = await self._store.run(self._store.sync.webhook_of, job.job_id) if job.callback_url else None
        return self._to_proto(job, outbox)

    def _to_proto(self, job: JobRow, outbox: OutboxRow | None = None, with_callback: bool = True) -> jobs_pb2.Job:
        """The job as the client sees it; ``outbox`` is its callback's delivery (None: not due yet)."""
        msg = jobs_pb2.Job(
            job_id=job.job_id, status=STATUS_PROTO[job.status], progress=job.progress, file_name=job.file_name,
            file_key=job.file_key, uid=job.uid, billed_time=job.billed_seconds, timestamp=int(job.created_at),
            mod_time=int(job.mod_time), model="model_16k" if job.sample_rate <= 16000 else "model_48k",
            sample_rate_hz=job.sample_rate, channels=job.channels, held=job.held,
            duration_seconds=job.frames / job.sample_rate, format=job.format,
            hold_seconds=self._submitter.limits.hold_seconds if job.held else 0.0,
        )
        if job.attenuation_limit_db is not None:
            msg.options.attenuation_limit_db = job.attenuation_limit_db
        if job.status == store_mod.FAILED:
            msg.error.code = job.error_code or "INTERNAL"
            msg.error.msg = job.error_msg or ""
        if job.status == store_mod.COMPLETED:
            expires, sig = self._signer.sign(job.job_id)
            msg.result.expires, msg.result.sig, msg.result.token = expires, sig, f"{expires}.{sig}"
        if job.callback_url and with_callback:
            msg.callback.CopyFrom(_callback(job.callback_url, outbox))
        return msg

    async def _own_job(self, job_id: str) -> JobRow:
        job = await self._store.get_job(job_id) if len(job_id) <= 64 else None
        if job is None or job.uid != current_principal().uid:
            raise HushwireError("JOB_NOT_FOUND", f"no job {quote_input(job_id)}")
        return job

    @rpc_errors
    async def SubmitJob(  # noqa: N802
        self, request_iterator: AsyncIterator[jobs_pb2.SubmitJobRequest], context: grpc.aio.ServicerContext,
    ) -> jobs_pb2.Job:
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "spec":
            raise HushwireError("INVALID_REQUEST", "the first message must be the JobSpec")
        spec = first.spec
        upload = UploadSpec(file_name=spec.file_name, file_key=spec.file_key, hold=spec.hold,
                            size_hint_bytes=spec.size_hint_bytes, attenuation_limit_db=_options_limit(spec.options),
                            idempotency_key=spec.idempotency_key, callback_url=spec.callback_url)
        submitted = await self._submitter.submit(current_principal(), upload, _upload_chunks(context),
                                                 reply=lambda job: self._to_proto(job).SerializeToString(),
                                                 log_fields=_client_subject(context))
        if submitted.job is None:
            assert submitted.stored_reply is not None
            return jobs_pb2.Job.FromString(submitted.stored_reply)   # the job is gone since: its reply as it was
        job = submitted.job
        if not job.held:
            self._runner.poke()
        return await self._job_proto(job)

    @rpc_errors
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:  # noqa: N802
        return await self._job_proto(await self._own_job(request.job_id))

    @rpc_errors
    async def ListJobs(  # noqa: N802
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = None
        if request.page_token:
            created, _, job_id = request.page_token.partition(":")
            try:
                before = (float(created), job_id)
            except ValueError:
                raise HushwireError("INVALID_REQUEST", "bad page_token") from None
        rows = await self._store.list_jobs(current_principal().uid, size + 1, before)
        resp = jobs_pb2.ListJobsResponse(jobs=[await self._job_proto(j) for j in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            resp.next_page_token = f"{last.created_at!r}:{last.job_id}"
        return resp

    @rpc_errors
    async def CancelJob(  # noqa: N802
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        job = await self._own_job(request.job_id)

        def late(settled: store_mod.Settled[JobRow | None]) -> None:  # deleted after the client gave up
            if settled.ran and settled.value is not None:
                self._submitter.delete_blobs_soon(settled.value.upload_blob, settled.value.result_blob)

        deleted = await self._store.run_or_undo(late, self._store.sync.delete_job, job.job_id)
        if deleted is not None:  # a running worker sees its lease gone and stops
            await self._submitter.delete_blobs(deleted.upload_blob, deleted.result_blob)
            event(log, "job cancelled", job_id=job.job_id, uid=job.uid, file_name=job.file_name)
        return jobs_pb2.CancelJobResponse()

    @rpc_errors
    async def StartJob(self, request: jobs_pb2.StartJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:  # noqa: N802
        job = await self._own_job(request.job_id)
        set_options = request.HasField("options")
        limit_db = _options_limit(request.options) if set_options else None
        callback_url = await self._submitter.callback_url(request.callback_url)
        await self._store.run(self._store.sync.start_job, job.job_id, limit_db, set_options, callback_url)
        self._runner.poke()
        return await self._job_proto(await self._own_job(job.job_id))

    @rpc_errors
    async def RenewHolds(  # noqa: N802
        self, request: jobs_pb2.RenewHoldsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RenewHoldsResponse:
        if len(request.job_ids) > MAX_RENEW_JOBS:
            raise HushwireError("INVALID_REQUEST", f"at most {MAX_RENEW_JOBS} job ids")
        hold_seconds = self._submitter.limits.hold_seconds
        until = time.time() + hold_seconds
        uid = current_principal().uid
        if request.idempotency_key:
            await self._store.run(self._store.sync.renew_key, uid, request.idempotency_key, request.reservation,
                                  until)
        ids = [job_id for job_id in request.job_ids if len(job_id) <= 64]
        missing = await self._store.run(self._store.sync.renew_holds, uid, ids, until)
        missing += [job_id[:64] for job_id in request.job_ids if len(job_id) > 64]
        return jobs_pb2.RenewHoldsResponse(missing_job_ids=missing, hold_seconds=hold_seconds)

    @rpc_errors
    async def StartJobs(  # noqa: N802
        self, request: jobs_pb2.StartJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.StartJobsResponse:
        uid = current_principal().uid
        if len(request.job_ids) > MAX_RENEW_JOBS:
            raise HushwireError("INVALID_REQUEST", f"at most {MAX_RENEW_JOBS} job ids")
        set_options = request.HasField("options")
        limit_db = _options_limit(request.options) if set_options else None
        idempotent = None
        if request.idempotency_key:
            if len(request.reply) > MAX_IDEMPOTENT_REPLY_BYTES or len(request.request_sha256) > 64:
                raise HushwireError("INVALID_REQUEST", f"an idempotent reply is at most "
                                    f"{MAX_IDEMPOTENT_REPLY_BYTES} bytes")
            idempotent = (request.idempotency_key, request.reservation, request.request_sha256, request.reply,
                          time.time() + IDEMPOTENCY_TTL_SECONDS)
        ids = list(request.job_ids)
        callback_url = await self._submitter.callback_url(request.callback_url)
        try:
            missing = await self._store.run(self._store.sync.start_jobs, uid, ids, limit_db, set_options, idempotent,
                                            callback_url)
        except store_mod.IdempotencyConflict:
            raise HushwireError("IDEMPOTENCY_CONFLICT", "the reservation of this idempotency key lapsed and "
                                "another request took it") from None
        if missing:
            raise HushwireError("JOB_NOT_FOUND", f"no held job {quote_input(missing[0])}")
        self._runner.poke()
        return jobs_pb2.StartJobsResponse()

    @rpc_errors
    async def ReserveIdempotencyKey(  # noqa: N802
        self, request: jobs_pb2.ReserveIdempotencyKeyRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ReserveIdempotencyKeyResponse:
        record = await self._submitter.reserve(current_principal().uid, request.idempotency_key)
        if record.reply is not None:
            return jobs_pb2.ReserveIdempotencyKeyResponse(request_sha256=record.request_sha256, reply=record.reply)
        return jobs_pb2.ReserveIdempotencyKeyResponse(reservation=record.token,
                                                      hold_seconds=self._submitter.limits.hold_seconds)

    @rpc_errors
    async def ReleaseIdempotencyKey(  # noqa: N802
        self, request: jobs_pb2.ReleaseIdempotencyKeyRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ReleaseIdempotencyKeyResponse:
        await self._store.run(self._store.sync.release_key, current_principal().uid, request.idempotency_key,
                              request.reservation)
        return jobs_pb2.ReleaseIdempotencyKeyResponse()

    @rpc_errors
    async def DownloadResult(  # noqa: N802
        self, request: jobs_pb2.DownloadResultRequest, context: grpc.aio.ServicerContext
    ) -> None:
        job = await self._downloadable(request.job_id, context)
        assert job.result_blob is not None
        fmt = job.result_format or job.format
        slow_s = self._timeouts.download_idle_s   # longer than a live stream's: a slow link still reads
        loop = asyncio.get_running_loop()
        clock = asyncio.timeout(None)   # runs while a write waits for the client: at most slow_s each
        try:
            reader = await asyncio.to_thread(self._blobs.open, job.result_blob)
            # Streamed from the store through this server: its URLs are never handed out. A client that
            # takes nothing for download_idle_s loses the call, and the open blob with it.
            with reader:
                async with clock:
                    clock.reschedule(loop.time() + slow_s)
                    await _send(context, jobs_pb2.DownloadResultResponse(info=jobs_pb2.ResultInfo(
                        file_name=result_name(job.file_name, fmt), content_type=content_type(fmt),
                        size_bytes=reader.size)), "download")
                    while True:
                        clock.reschedule(None)   # the store's read is not the client's doing
                        chunk = await asyncio.to_thread(reader.read, DOWNLOAD_CHUNK_BYTES)
                        if not chunk:
                            return
                        clock.reschedule(loop.time() + slow_s)
                        await _send(context, jobs_pb2.DownloadResultResponse(chunk=chunk), "download")
        except BlobNotFound:  # cancelled (deleted) between the lookup and the read
            raise HushwireError("JOB_NOT_FOUND", f"no job {quote_input(request.job_id)}") from None
        except TimeoutError:
            if not clock.expired():
                raise
        principal = maybe_principal()
        await end_call(context, HushwireError("SLOW_CONSUMER", f"the client read no response for {slow_s:g} s"),
                       principal.uid if principal is not None else None, self._timeouts.flush_s, self._connections,
                       "download")

    async def _downloadable(self, job_id: str, context: grpc.aio.ServicerContext) -> JobRow:
        """The job if the caller may download it: a valid signed token (whoever presents it, with or
        without a key: a shared result URL works for anyone), else the owner's key."""
        token = dict(context.invocation_metadata() or ()).get(RESULT_TOKEN_KEY)
        if token is not None:
            self._signer.check(job_id, str(token))
            job = await self._store.get_job(job_id)
            if job is None:
                raise HushwireError("JOB_NOT_FOUND", f"no job {quote_input(job_id)}")
        elif maybe_principal() is None:
            raise HushwireError("API_KEY_NOT_FOUND")
        else:
            job = await self._own_job(job_id)
        if job.status != store_mod.COMPLETED or not job.result_blob:
            raise HushwireError("JOB_NOT_FOUND", f"job {quote_input(job_id)} has no result yet (status {job.status})")
        return job


class AccountServicer(jobs_pb2_grpc.AccountServicer):
    def __init__(self, store: AsyncStore) -> None:
        self._store = store

    @rpc_errors
    async def WhoAmI(  # noqa: N802
        self, request: jobs_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.WhoAmIResponse:
        p = current_principal()
        return jobs_pb2.WhoAmIResponse(uid=p.uid, name=p.name, key_id=p.key_id)

    @rpc_errors
    async def GetWebhookSecret(  # noqa: N802
        self, request: jobs_pb2.WebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.WebhookSecret:
        found = await self._store.run(self._store.sync.webhook_secrets, current_principal().uid, ROTATION_GRACE_S)
        return _secret_proto(found)

    @rpc_errors
    async def RotateWebhookSecret(  # noqa: N802
        self, request: jobs_pb2.WebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.WebhookSecret:
        uid = current_principal().uid
        found = await self._store.run(self._store.sync.rotate_webhook_secret, uid, ROTATION_GRACE_S)
        event(log, "webhook secret rotated", uid=uid)
        return _secret_proto(found)


def _secret_proto(found: WebhookSecrets) -> jobs_pb2.WebhookSecret:
    return jobs_pb2.WebhookSecret(secret=found.current, previous_valid_until=int(found.previous_valid_until or 0))


def _callback(url: str, row: OutboxRow | None) -> jobs_pb2.JobCallback:
    """A job's callback state for its status: waiting until the job ends, then its delivery's."""
    if row is None:
        return jobs_pb2.JobCallback(url=url, state="waiting")
    return jobs_pb2.JobCallback(
        url=row.url, state=row.state, attempts=row.attempts, last_status_code=row.last_status or 0,
        last_error=row.last_error or "", last_attempt_at=int(row.last_attempt_at or 0),
        next_attempt_at=int(row.next_attempt_at) if row.state == OUTBOX_PENDING else 0, event_id=row.event_id)
