"""``POST /enhance``: a multipart body parsed as a stream and forwarded file by file to ``Jobs.SubmitJob``.

How memory stays bounded: python-multipart's push parser is fed the request body chunk by chunk
(``request.stream()``; uvicorn delivers at most a few hundred KiB per chunk and stops reading the
socket while the app has not taken what it buffered). The parser's callbacks only record what they
saw; after each chunk the events are replayed here, and a file part's bytes go into that file's
client-streamed ``SubmitJob`` call in messages of at most :data:`CHUNK_BYTES`. Each ``write`` is
awaited, and grpc completes it only once the message is handed to the transport (HTTP/2 flow
control), so the gateway never reads more of the request than the server has taken: at any time
it holds one body chunk, one part's pending bytes (< :data:`CHUNK_BYTES`) and grpc's one message in
flight, whatever the file size. Nothing is spooled to disk.

Atomicity (docs/design.md): every file is submitted with ``hold = true``. If any file is refused, or the
request fails in any other way, the jobs already created are deleted with ``Jobs.CancelJob`` and the
reply is that error; only when every file was accepted does the gateway call ``Jobs.StartJob`` for each.
If the gateway dies mid-request, the server sweeps the held jobs once their hold runs out
(``Job.hold_seconds``); so while a request goes on, the gateway renews its held jobs
(``Jobs.RenewHolds``) at each new part and as the body flows, whenever a third of the hold has passed.
The last step starts every job at once (``Jobs.StartJobs``, all or none).

Idempotency (``Idempotency-Key`` header): the gateway first asks the server to reserve the user's key
(``Jobs.ReserveIdempotencyKey``). A key that a successful request already used comes back with that
request's fingerprint and reply: the body is then parsed without submitting anything, its fingerprint
compared, and the stored reply returned as it was (or 409 ``IDEMPOTENCY_CONFLICT`` for a different
request). A new key runs the request as usual, and ``StartJobs`` stores the reply under the key in the
same transaction that starts the jobs. A request that fails gives its reservation up, so only
successful replies are remembered. The fingerprint is the SHA-256 of the parts in order: each file's
field name, file name and content SHA-256, and the option's name and value (not the multipart
boundary, nor any header).

The gateway checks only the HTTP shape (content type, form fields, number of files, body size,
the option's syntax). Everything about the audio is the server's to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from client.errors import CallStatus
from gateway.errors import GatewayError, from_call_error, from_rpc_error, has_server_code
from hushwire.contract.errors import quote_input
from hushwire.contract.limits import check_attenuation_limit
from hushwire.v1 import jobs_pb2, jobs_pb2_grpc

__all__ = ["CALLBACK_FIELD", "CHUNK_BYTES", "IDEMPOTENCY_HEADER", "OPTION_FIELD", "UploadLimits", "enhance_upload",
           "finish_cleanups", "render_reply"]

log = logging.getLogger("hushwire.gateway")

OPTION_FIELD = "attenuation_limit_db"
CALLBACK_FIELD = "callback_url"   # the server checks the URL (its policy) when the jobs start
IDEMPOTENCY_HEADER = "Idempotency-Key"
CHUNK_BYTES = 256 * 1024          # file bytes per SubmitJob message (the contract allows up to 1 MiB)
MAX_FIELD_VALUE_BYTES = 64        # the option's value: a number, never more than a few characters
MAX_CALLBACK_BYTES = 2048         # the callback URL (the server's limit too)
MAX_PART_HEADER_BYTES = 16 * 1024  # all header lines of one part together

# Clean-ups that must outlive a cancelled request; asyncio keeps only weak references to tasks.
_BACKGROUND: set[asyncio.Task[None]] = set()
# The requests running an upload now (finish_cleanups waits for them at shutdown).
_ACTIVE: set[asyncio.Task[Any]] = set()

Metadata = Sequence[tuple[str, str]]
_SubmitCall: TypeAlias = "grpc.aio.StreamUnaryCall[jobs_pb2.SubmitJobRequest, jobs_pb2.Job]"
Reply = dict[str, str | list[str]]


@dataclass(frozen=True)
class UploadLimits:
    """The gateway's settings for uploads (gateway/app.py fills them from its config; no defaults here,
    so each stays written once)."""

    max_body_bytes: int
    max_files: int
    idle_seconds: float    # a body that sends nothing for this long is a stalled upload (408)
    rpc_timeout: float     # deadline of the unary calls (StartJob, CancelJob)


@dataclass
class _Part:
    """The part being parsed: its headers, then either a file upload or the option's value."""

    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    name: str = ""
    call: _SubmitCall | None = None
    status: CallStatus | None = None                        # the call's status as the server sent it
    pending: bytearray = field(default_factory=bytearray)   # file bytes not yet sent (< CHUNK_BYTES)
    value: bytearray | None = None                          # the option's value, for a non-file part
    file_name: str = ""
    sha: Any = None                                         # a file part's content SHA-256, as it flows


def _text(raw: bytes) -> str:
    """A header parameter: browsers send UTF-8 bytes that python-multipart hands over as latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _attenuation(raw: bytes) -> float:
    try:
        return check_attenuation_limit(float(raw.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        raise GatewayError("INVALID_REQUEST", f"{OPTION_FIELD} must be a number >= 0 (dB), "
                           f"got {quote_input(raw.decode('latin-1'))}") from None


def render_reply(reply: Reply) -> bytes:
    """The reply's JSON, exactly as a retry with the same Idempotency-Key gets it again."""
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode()


class _Upload:
    """One ``POST /enhance`` request: parse, submit held jobs, then start them (or cancel them all).
    With ``dry``, only parse and fingerprint the body (a retry whose reply is stored already);
    with ``reservation`` (key, token, hold seconds), store the reply under the reserved key."""

    def __init__(self, stub: jobs_pb2_grpc.JobsStub, metadata: Metadata, limits: UploadLimits, *,
                 dry: bool = False, reservation: tuple[str, str, float] | None = None) -> None:
        self._dry = dry
        self._reservation = reservation
        self._entries: list[list[str]] = []   # what makes the request what it is, part by part
        self.outcome_unknown = False          # StartJobs failed in transit: it may have started the jobs
        self._stub = stub
        self._metadata = tuple(metadata)
        self._limits = limits
        self._events: list[tuple[str, bytes]] = []
        self._part: _Part | None = None
        self._ended = False
        self._files = 0
        self._attenuation: float | None = None
        self._callback_url: str | None = None
        self._jobs: list[tuple[str, str]] = []   # (field name, job id) in part order
        self._hold_s = reservation[2] if reservation else 0.0   # the server's hold (from its replies)
        self._renewed_at = asyncio.get_running_loop().time()    # the last activity on all of them

    # -- parser callbacks: record only; the async work happens in _replay ---------------------------

    def _on(self, kind: str) -> None:
        self._events.append((kind, b""))

    def _on_data(self, kind: str, data: bytes, start: int, end: int) -> None:
        self._events.append((kind, bytes(data[start:end])))

    def _parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(boundary, {
            "on_part_begin": lambda: self._on("part_begin"),
            "on_header_field": lambda d, s, e: self._on_data("header_field", d, s, e),
            "on_header_value": lambda d, s, e: self._on_data("header_value", d, s, e),
            "on_header_end": lambda: self._on("header_end"),
            "on_headers_finished": lambda: self._on("headers_finished"),
            "on_part_data": lambda d, s, e: self._on_data("part_data", d, s, e),
            "on_part_end": lambda: self._on("part_end"),
            "on_end": lambda: self._on("end"),
        })

    # -- the request -------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The request's SHA-256 (hex) over its parts in order; the multipart boundary plays no part."""
        return hashlib.sha256(json.dumps(self._entries, separators=(",", ":")).encode()).hexdigest()

    async def run(self, request: Request) -> bytes:
        """Run the request; returns the reply's JSON (nothing in a dry run)."""
        ctype, params = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data":
            raise GatewayError("INVALID_REQUEST", "the body must be multipart/form-data with one or more files",
                               415)
        boundary = params.get(b"boundary")
        if not boundary:
            raise GatewayError("INVALID_REQUEST", "multipart/form-data without a boundary")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._limits.max_body_bytes:
            raise GatewayError("FILE_TOO_LARGE", self._too_large_msg())
        try:
            parser = self._parser(boundary)
        except FormParserError as exc:
            raise GatewayError("INVALID_REQUEST", f"bad multipart boundary: {quote_input(exc, 200)}") from None
        accepted = False
        try:
            async with contextlib.aclosing(self._body(request)) as body:
                async for chunk in body:
                    try:
                        parser.write(chunk)
                    except FormParserError as exc:
                        raise GatewayError("INVALID_REQUEST",
                                           f"malformed multipart body: {quote_input(exc, 200)}") from None
                    await self._replay()
                    await self._renew_if_due()
            parser.finalize()
            await self._replay()
            if not self._ended:
                raise GatewayError("INVALID_REQUEST", "the multipart body ended before its closing boundary")
            if not self._files:
                raise GatewayError("INVALID_FILE", "no file in the request: send one or more files as "
                                   "multipart/form-data")
            if self._dry:
                return b""
            reply: Reply = {}
            for name, job_id in self._jobs:
                prev = reply.get(name)
                reply[name] = job_id if prev is None else [*([prev] if isinstance(prev, str) else prev), job_id]
            rendered = render_reply(reply)
            await self._start_all(rendered)
            accepted = True
            return rendered
        finally:
            if self._part is not None and self._part.call is not None:
                self._part.call.cancel()   # an upload cut short: the server stores nothing for it
            # A StartJobs lost in transit may have started the jobs: they are left alone then (held
            # ones are swept when their hold runs out).
            if not accepted and self._jobs and not self.outcome_unknown:
                await self._cancel_all()

    def _too_large_msg(self) -> str:
        return f"the request body is over the upload limit of {self._limits.max_body_bytes} bytes"

    async def _body(self, request: Request) -> AsyncGenerator[bytes, None]:
        """The body's chunks, refused with 413 as soon as it passes the limit and 408 if it stalls."""
        stream = request.stream().__aiter__()
        total = 0
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), self._limits.idle_seconds)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise GatewayError("REQUEST_TIMEOUT", f"the upload sent nothing for "
                                   f"{self._limits.idle_seconds:g} s") from None
            total += len(chunk)
            if total > self._limits.max_body_bytes:
                raise GatewayError("FILE_TOO_LARGE", self._too_large_msg())
            if chunk:
                yield chunk

    async def _replay(self) -> None:
        events, self._events = self._events, []
        for kind, data in events:
            if kind == "part_begin":
                self._part = _Part()
            elif kind == "end":
                self._ended = True
            else:
                part = self._part
                assert part is not None, f"multipart event {kind} outside a part"
                await self._part_event(part, kind, data)

    async def _part_event(self, part: _Part, kind: str, data: bytes) -> None:
        if kind == "part_data":
            if part.sha is not None:
                part.sha.update(data)
            if part.call is not None:
                part.pending += data
                if len(part.pending) >= CHUNK_BYTES:
                    await self._send(part, final=False)
            elif part.value is not None:
                part.value += data
                if len(part.value) > (MAX_CALLBACK_BYTES if part.name == CALLBACK_FIELD else MAX_FIELD_VALUE_BYTES):
                    raise GatewayError("INVALID_REQUEST", f"the value of {part.name} is too long")
        elif kind in ("header_field", "header_value"):
            part.header_bytes += len(data)
            if part.header_bytes > MAX_PART_HEADER_BYTES:
                raise GatewayError("INVALID_REQUEST", "a multipart part has too many header bytes")
            (part.header_field if kind == "header_field" else part.header_value).extend(data)
        elif kind == "header_end":
            part.headers[part.header_field.decode("latin-1").strip().lower()] = part.header_value.decode("latin-1")
            part.header_field.clear()
            part.header_value.clear()
        elif kind == "headers_finished":
            await self._begin_part(part)
        elif kind == "part_end":
            await self._end_part(part)
            self._part = None

    async def _begin_part(self, part: _Part) -> None:
        disposition, params = parse_options_header(part.headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise GatewayError("INVALID_REQUEST", "every multipart part needs a Content-Disposition: form-data "
                               "header with a name")
        part.name = _text(params[b"name"])
        if b"filename" not in params:
            if part.name not in (OPTION_FIELD, CALLBACK_FIELD):
                raise GatewayError("INVALID_REQUEST", f"unknown form field {quote_input(part.name)}: the only "
                                   f"fields that are not files are {OPTION_FIELD!r} and {CALLBACK_FIELD!r}")
            given = self._attenuation if part.name == OPTION_FIELD else self._callback_url
            if given is not None:
                raise GatewayError("INVALID_REQUEST", f"{part.name} was given twice")
            part.value = bytearray()
            return
        self._files += 1
        if self._files > self._limits.max_files:
            raise GatewayError("INVALID_REQUEST", f"at most {self._limits.max_files} files per request")
        part.file_name = _text(params[b"filename"])
        part.sha = hashlib.sha256()
        if self._dry:
            return
        await self._renew_if_due()
        spec = jobs_pb2.JobSpec(file_name=part.file_name, file_key=part.name, hold=True)
        if self._attenuation is not None:
            spec.options.attenuation_limit_db = self._attenuation
        part.call = self._stub.SubmitJob(metadata=self._metadata)
        part.status = CallStatus(part.call)
        await self._write(part, jobs_pb2.SubmitJobRequest(spec=spec))

    async def _end_part(self, part: _Part) -> None:
        if part.value is not None and part.name == CALLBACK_FIELD:
            self._callback_url = _text(bytes(part.value)).strip()
            self._entries.append(["option", part.name, self._callback_url])
            return
        if part.value is not None:
            self._attenuation = _attenuation(bytes(part.value))
            self._entries.append(["option", part.name, repr(self._attenuation)])
            return
        if part.sha is not None:
            self._entries.append(["file", part.name, part.file_name, part.sha.hexdigest()])
        if part.call is not None:
            await self._send(part, final=True)
            await self._write(part, None)
            try:
                job = await part.call
            except grpc.aio.AioRpcError as exc:
                raise await from_call_error(exc, part.status, "upload") from None
            part.call = None
            if not self._jobs and self._reservation is None:
                self._renewed_at = asyncio.get_running_loop().time()
            self._hold_s = job.hold_seconds
            self._jobs.append((part.name, job.job_id))

    async def _send(self, part: _Part, final: bool) -> None:
        assert part.call is not None
        while len(part.pending) >= CHUNK_BYTES or (final and part.pending):
            chunk = bytes(part.pending[:CHUNK_BYTES])
            del part.pending[:CHUNK_BYTES]
            await self._write(part, jobs_pb2.SubmitJobRequest(chunk=chunk))

    async def _write(self, part: _Part, message: jobs_pb2.SubmitJobRequest | None) -> None:
        """Send one message (None: half-close). If the server already ended the call (a refused file),
        raise the server's error."""
        call = part.call
        assert call is not None
        try:
            if message is None:
                await call.done_writing()
            else:
                await call.write(message)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # grpc raises several kinds here; the call's outcome decides
            failure: BaseException = exc
        # grpc.aio reports a write racing the server's end of the call as a local INTERNAL error
        # ("Internal error from Core") or InvalidStateError, and may replace the call's own status
        # with that INTERNAL: CallStatus keeps the server's status and its hushwire-error-code trailer.
        try:
            job = await asyncio.wait_for(self._outcome(call), self._limits.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise await from_call_error(exc, part.status, "upload") from None
        except TimeoutError:
            call.cancel()
            raise GatewayError("UPSTREAM_ERROR", f"sending the upload failed: {failure}", 502) from None
        self._jobs.append(("", job.job_id))   # answered before the whole file was sent: it is cancelled
        raise GatewayError("UPSTREAM_ERROR", "the server answered before the upload was complete", 502)

    @staticmethod
    async def _outcome(call: _SubmitCall) -> jobs_pb2.Job:
        return await call

    async def _renew_if_due(self) -> None:
        """Renew the held jobs of this request once a third of their hold has passed since the last time."""
        now = asyncio.get_running_loop().time()
        if not (self._jobs or self._reservation) or not self._hold_s or now - self._renewed_at < self._hold_s / 3:
            return
        renew = jobs_pb2.RenewHoldsRequest(job_ids=[job_id for _, job_id in self._jobs])
        if self._reservation is not None:
            renew.idempotency_key, renew.reservation = self._reservation[0], self._reservation[1]
        try:
            reply = await self._stub.RenewHolds(renew, metadata=self._metadata, timeout=self._limits.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        if reply.missing_job_ids:
            raise GatewayError("REQUEST_TIMEOUT", "the upload took so long that the server released the files it "
                               "had already accepted; send the request again")
        self._renewed_at = now

    async def _start_all(self, reply: bytes) -> None:
        """Start every job at once; with a reservation, the server stores ``reply`` under its key too."""
        start = jobs_pb2.StartJobsRequest(job_ids=[job_id for _, job_id in self._jobs])
        if self._attenuation is not None:
            start.options.attenuation_limit_db = self._attenuation
        if self._callback_url:
            start.callback_url = self._callback_url
        if self._reservation is not None:
            start.idempotency_key, start.reservation = self._reservation[0], self._reservation[1]
            start.request_sha256, start.reply = self.fingerprint, reply
        try:
            await self._stub.StartJobs(start, metadata=self._metadata, timeout=self._limits.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            self.outcome_unknown = not has_server_code(exc)
            raise from_rpc_error(exc) from None

    async def release(self) -> None:
        """Give the idempotency key's reservation up (the request failed). Shielded, like _cancel_all."""
        if self._reservation is None:
            return
        key, token, _ = self._reservation

        async def release() -> None:
            try:
                await self._stub.ReleaseIdempotencyKey(
                    jobs_pb2.ReleaseIdempotencyKeyRequest(idempotency_key=key, reservation=token),
                    metadata=self._metadata, timeout=self._limits.rpc_timeout)
            except grpc.aio.AioRpcError as exc:   # it lapses after the hold anyway
                log.warning("could not release an idempotency key: %s %s", exc.code().name, exc.details())

        task = asyncio.ensure_future(release())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        await asyncio.shield(task)

    async def _cancel_all(self) -> None:
        """Delete every job this request created. Shielded: it must finish even if the request is cancelled."""
        jobs = [job_id for _, job_id in self._jobs]

        async def cancel() -> None:
            for job_id in jobs:
                try:
                    await self._stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=self._metadata,
                                               timeout=self._limits.rpc_timeout)
                except grpc.aio.AioRpcError as exc:
                    log.warning("could not cancel job %s of a refused request: %s %s", job_id, exc.code().name,
                                exc.details())

        task = asyncio.ensure_future(cancel())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        await asyncio.shield(task)


async def _enhance_upload(request: Request, stub: jobs_pb2_grpc.JobsStub, account: jobs_pb2_grpc.AccountStub,
                          metadata: Metadata, limits: UploadLimits) -> bytes:
    """Parse the request's multipart body as a stream into held jobs and start them; the reply (JSON)
    maps each field name to its job id (a list when the field carried several files). With an
    ``Idempotency-Key`` header, a retry of a successful request gets its reply again, creating nothing.

    The key is checked before any of the body is read or forwarded (``Account.WhoAmI``, or the
    reservation of the idempotency key): a server that refused it at the start of a ``SubmitJob``
    would reset the stream while the body still flows, which a balancer (HAProxy) reports as
    CANCELLED without the server's code, so the caller got 502 instead of 401."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        try:
            await account.WhoAmI(jobs_pb2.WhoAmIRequest(), metadata=metadata, timeout=limits.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return await _Upload(stub, metadata, limits).run(request)
    try:
        got = await stub.ReserveIdempotencyKey(jobs_pb2.ReserveIdempotencyKeyRequest(idempotency_key=key),
                                               metadata=metadata, timeout=limits.rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    if got.reply:
        retry = _Upload(stub, metadata, limits, dry=True)
        await retry.run(request)
        if retry.fingerprint != got.request_sha256:
            raise GatewayError("IDEMPOTENCY_CONFLICT", "this Idempotency-Key was used with a different request "
                               "(field names, file names, file contents or options)")
        log.info("an Idempotency-Key retry got its stored reply")
        return bytes(got.reply)
    upload = _Upload(stub, metadata, limits, reservation=(key, got.reservation, got.hold_seconds))
    try:
        return await upload.run(request)
    except BaseException:
        if not upload.outcome_unknown:
            await upload.release()
        raise


async def enhance_upload(request: Request, stub: jobs_pb2_grpc.JobsStub, account: jobs_pb2_grpc.AccountStub,
                         metadata: Metadata, limits: UploadLimits) -> bytes:
    """:func:`_enhance_upload`, tracked so that a gateway that stops lets cut requests clean up first."""
    task = asyncio.current_task()
    if task is not None:
        _ACTIVE.add(task)
    try:
        return await _enhance_upload(request, stub, account, metadata, limits)
    finally:
        if task is not None:
            _ACTIVE.discard(task)


async def finish_cleanups(timeout: float) -> None:
    """Wait up to ``timeout`` for the uploads under way and their clean-ups to end. At shutdown uvicorn
    cancels the requests still running after its grace time and at once shuts the app down: without
    this wait the gateway closed its channel while a cut request was cancelling its held jobs, and they
    stayed behind (until the server's hold sweeper)."""
    deadline = asyncio.get_running_loop().time() + timeout
    for tasks in (_ACTIVE, _BACKGROUND):   # a request's clean-up task exists once the request has ended
        left = deadline - asyncio.get_running_loop().time()
        if tasks and left > 0:
            await asyncio.wait(set(tasks), timeout=left)
