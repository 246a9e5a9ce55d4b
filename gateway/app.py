"""The HTTP gateway: ``create_app(config)`` (an ASGI app) and ``run(config)`` (uvicorn).

Each route translates one HTTP request into gRPC calls on the hushwire server over one
``grpc.aio`` channel made at start-up, and the reply back; the server does every check that is
about audio, keys or jobs. Failed RPCs become HTTP errors in one place
(:func:`gateway.errors.from_rpc_error`, installed as an exception handler).

Routes (docs/design.md, "Files over REST"):

- ``POST /enhance``: multipart upload → held ``Jobs.SubmitJob`` per file → ``Jobs.StartJob`` (gateway.upload)
- ``GET|POST /stat/jobs/{job_id}``: ``Jobs.GetJob`` → the DeepHearing status keys
- ``GET /results/{job_id}?expires=&sig=``: ``Jobs.DownloadResult`` with the signed token, streamed
- ``GET /me``: ``Account.WhoAmI``; ``GET /healthz``, ``GET /readyz``; ``/docs``, ``/openapi.json``
- ``GET /`` and ``/console/*``: the web console (gateway.console), with a strict Content-Security-Policy;
  ``GET /console/limits.json``: the stream limits the console uses (the contract's values)
- ``WS /live``: one WebSocket bridged to one ``Enhancer.StreamEnhance`` call (gateway.live, protocol there)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import signal
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import quote

import grpc
import swagger_ui_bundle
import uvicorn
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.channel import ClientTLS, open_aio_pool
from client.errors import HushwireClientError
from gateway.config import GatewayConfig
from gateway.console import ConsoleAssets, console_limits, console_page
from gateway.errors import GatewayError, error_response, from_rpc_error
from gateway.live import MAX_MESSAGE_BYTES, LiveBridge
from gateway.metrics import MetricsMiddleware, metrics_response
from gateway.openapi import ENHANCE_BODY, ENHANCE_PARAMETERS, ERROR_REPLIES, openapi_document, reply
from gateway.upload import UploadLimits, enhance_upload, finish_cleanups
from hushwire.contract.metadata import AUTHORIZATION_KEY, MAX_KEY_CHARS, RESULT_TOKEN_KEY
from hushwire.contract.rest import job_to_dict, result_url
from hushwire.settings import ConfigError, bind_all
from hushwire.v1 import enhancer_pb2_grpc, jobs_pb2, jobs_pb2_grpc

__all__ = ["MAX_FILES_PER_REQUEST", "create_app", "public_url_of", "run"]

log = logging.getLogger("hushwire.gateway")

MAX_FILES_PER_REQUEST = 32
MAX_TOKEN_CHARS = 256          # a result token is ~75 characters; a longer one is not sent as metadata
READY_TIMEOUT_S = 2.0          # a readiness probe must answer quickly, whatever the RPC deadline
GRACEFUL_SHUTDOWN_S = 10     # open requests get this long after SIGTERM
CLEANUP_TIMEOUT_S = 5.0      # then the uploads cut short get this long to cancel their held jobs
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SWAGGER_ASSETS = Path(swagger_ui_bundle.swagger_ui_path)

def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def public_url_of(config: GatewayConfig, port: int) -> str:
    """Where clients reach the gateway: ``--public-url``, else its own ``http://host:port``."""
    if config.public_url:
        return config.public_url.rstrip("/")
    if config.gateway_host in WILDCARD_HOSTS:
        raise ConfigError(f"--public-url is required when the gateway listens on all interfaces "
                          f"({config.gateway_host or '*'}): result URLs must name an address clients can reach")
    return f"{_scheme(config)}://{_url_host(config.gateway_host)}:{port}"


def _scheme(config: GatewayConfig) -> str:
    return "https" if config.gateway_tls_cert else "http"


class _Upstream:
    """The gRPC connections to the hushwire server and their stubs; made at start-up, closed at shutdown.

    A small pool (``--grpc-connections``): a server of several processes on one port (``serve
    --processes``) serves each connection in one process, so the calls take turns on the connections
    to spread over the processes. A ``/live`` stream refused with OVERLOADED for this process's load
    (trailer ``hushwire-refused-for: load``) when it opens is tried on up to two of the pool's other
    connections (each maybe another process) before the refusal goes to the client; a refusal for the
    group's ``--max-streams`` (``cap``) goes to the client at once (gateway/live.py).
    """

    def __init__(self, target: str, tls: ClientTLS | None, connections: int = 1) -> None:
        self.channels = open_aio_pool(target, connections, tls)  # the client library's channel options
        self._jobs = [jobs_pb2_grpc.JobsStub(ch) for ch in self.channels]
        self._enhancers = [enhancer_pb2_grpc.EnhancerStub(ch) for ch in self.channels]
        self._accounts = [jobs_pb2_grpc.AccountStub(ch) for ch in self.channels]
        self._health = [health_pb2_grpc.HealthStub(ch) for ch in self.channels]
        self._turn = itertools.count()

    def _next(self) -> int:
        return next(self._turn) % len(self.channels)

    @property
    def jobs(self) -> jobs_pb2_grpc.JobsStub:
        return self._jobs[self._next()]

    @property
    def account(self) -> jobs_pb2_grpc.AccountStub:
        return self._accounts[self._next()]

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return self._health[self._next()]

    def enhancers(self) -> list[enhancer_pb2_grpc.EnhancerStub]:
        """Every connection's stub, starting with the next one's: a stream opens on the first."""
        first = self._next()
        return self._enhancers[first:] + self._enhancers[:first]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def _metadata(request: Request) -> list[tuple[str, str]]:
    """The caller's ``Authorization`` header, passed through as gRPC metadata (the server checks it)."""
    auth = request.headers.get("authorization")
    if auth is None or not auth.strip():
        return []
    auth = auth.strip()
    # Not even a possible key, and not valid (or too large) gRPC metadata: refused here, unsent.
    if len(auth) > MAX_KEY_CHARS or not all(" " <= ch <= "~" for ch in auth):
        raise GatewayError("API_KEY_NOT_FOUND")
    return [(AUTHORIZATION_KEY, auth)]


def _content_disposition(file_name: str) -> str:
    plain = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in file_name) or "result"
    value = f'attachment; filename="{plain}"'
    if plain != file_name:
        value += f"; filename*=UTF-8''{quote(file_name, safe='')}"
    return value


class _CatchAll:
    """An unexpected exception becomes 500 INTERNAL with an id in ``msg``, logged with the same id;
    the client never sees a traceback. Once a reply has started, the connection is just cut."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error id=%s on %s %s", error_id, scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(500, "INTERNAL", f"internal error (id {error_id})")
                await response(scope, receive, send)


class _ConnectionLimit:
    """At most ``limit`` connections served at once (``--max-connections``): each HTTP request in flight
    and each open WebSocket counts, from its start to its last byte. Idle keep-alive connections do not
    count, so they never starve new requests (they close after ``--http-keepalive-seconds``). Past the
    limit a request gets 503 OVERLOADED with ``Retry-After`` and ``Connection: close`` (the connection
    is freed too), and a ``/live`` WebSocket is refused as a full server refuses it (error message, close
    1013). Liveness and metrics (:data:`UNCOUNTED_PATHS`) always answer: a busy gateway is not a dead one.

    uvicorn's own ``limit_concurrency`` counts idle connections too and answers in plain text."""

    UNCOUNTED_PATHS = frozenset({"/healthz", "/metrics"})

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0
        self.full = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            error = GatewayError("OVERLOADED", f"the gateway is serving its maximum of {self.limit} connections "
                                               "(--max-connections); try again shortly")
            if not self.full:   # once per time the limit is reached, not once per refusal
                log.warning("%d connections busy (--max-connections): refusing new requests with OVERLOADED",
                            self.active)
                self.full = True
            if scope["type"] == "websocket":
                await LiveBridge.refuse(WebSocket(scope, receive, send), error)
            else:
                response = error.response()
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.full = self.full and self.active >= self.limit


class _Gateway:
    """The route handlers, bound to one config and one upstream channel."""

    def __init__(self, config: GatewayConfig, public_url: str) -> None:
        self.config = config
        self.public_url = public_url
        self.limits = UploadLimits(max_body_bytes=config.max_upload_bytes, max_files=MAX_FILES_PER_REQUEST,
                                   idle_seconds=config.upload_idle_seconds, rpc_timeout=config.connect_timeout)
        self._upstream: _Upstream | None = None

    @property
    def upstream(self) -> _Upstream:
        if self._upstream is None:
            raise RuntimeError("the gateway's gRPC channel is not open (lifespan not started)")
        return self._upstream

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        c = self.config
        self._upstream = _Upstream(c.grpc_target, ClientTLS.of(c.grpc_tls_ca, c.grpc_tls_cert, c.grpc_tls_key),
                                   c.grpc_connections)
        log.info("forwarding to the hushwire server at %s%s (%d connection%s); result URLs start with %s",
                 c.grpc_target, " over TLS" if c.grpc_tls_ca else "", c.grpc_connections,
                 "" if c.grpc_connections == 1 else "s", self.public_url)
        try:
            yield
        finally:
            await finish_cleanups(CLEANUP_TIMEOUT_S)   # cut uploads cancel their held jobs on this channel
            await self._upstream.close()
            self._upstream = None

    # -- files --------------------------------------------------------------------------------------

    async def enhance(self, request: Request) -> Response:
        """Upload one or more audio files; each becomes a job. The reply maps field names to job ids."""
        body = await enhance_upload(request, self.upstream.jobs, self.upstream.account, _metadata(request),
                                    self.limits)
        return Response(body, media_type="application/json")

    async def stat(self, request: Request, job_id: str) -> JSONResponse:
        """A job's status with the DeepHearing keys, plus `progress` and, for failed jobs, `error`."""
        job = await self.upstream.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=_metadata(request),
                                              timeout=self.config.connect_timeout)
        return JSONResponse(self._stat(job))

    def _stat(self, job: jobs_pb2.Job) -> dict[str, Any]:
        url = None
        if job.status == jobs_pb2.JOB_STATUS_COMPLETED and job.HasField("result"):
            url = result_url(self.public_url, job.job_id, job.result.expires, job.result.sig)
        return job_to_dict(job, url)

    async def result(
        self,
        request: Request,
        job_id: str,
        expires: Annotated[str, Query(description="from the signed result URL")] = "",
        sig: Annotated[str, Query(description="from the signed result URL")] = "",
    ) -> StreamingResponse:
        """Download a completed job's result through its signed URL (no API key needed)."""
        token = f"{expires}.{sig}"
        if not expires or not sig or len(token) > MAX_TOKEN_CHARS or not all(" " < ch <= "~" for ch in token):
            raise GatewayError("JOB_NOT_FOUND", "this result URL is not valid")
        metadata = [*_metadata(request), (RESULT_TOKEN_KEY, token)]
        call = self.upstream.jobs.DownloadResult(jobs_pb2.DownloadResultRequest(job_id=job_id), metadata=metadata)
        try:
            first = await call.read()
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "info":
            call.cancel()
            raise GatewayError("UPSTREAM_ERROR", "the server's result stream did not start with its info", 502)
        info = first.info
        headers = {"Content-Disposition": _content_disposition(info.file_name or f"{job_id}.wav")}
        if info.size_bytes:
            headers["Content-Length"] = str(info.size_bytes)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while (msg := await call.read()) is not grpc.aio.EOF:
                    if msg.WhichOneof("msg") == "chunk":
                        yield msg.chunk
            except grpc.aio.AioRpcError as exc:
                # Headers are gone already: cut the connection so the client sees a broken download.
                raise RuntimeError(f"result stream of job {job_id} broke off: {from_rpc_error(exc)}") from None
            finally:
                call.cancel()

        return StreamingResponse(chunks(), media_type=info.content_type or "application/octet-stream",
                                 headers=headers)

    # -- account and probes ------------------------------------------------------------------------

    async def me(self, request: Request) -> JSONResponse:
        """Who the API key belongs to; 401 for a missing or unknown key."""
        who = await self.upstream.account.WhoAmI(jobs_pb2.WhoAmIRequest(), metadata=_metadata(request),
                                                 timeout=self.config.connect_timeout)
        return JSONResponse({"uid": who.uid, "name": who.name})

    async def webhook_secret(self, request: Request) -> JSONResponse:
        """The key's user's webhook signing secret (created on first use)."""
        found = await self.upstream.account.GetWebhookSecret(jobs_pb2.WebhookSecretRequest(),
                                                             metadata=_metadata(request),
                                                             timeout=self.config.connect_timeout)
        return JSONResponse(_secret_reply(found), headers=_NO_STORE)

    async def rotate_webhook_secret(self, request: Request) -> JSONResponse:
        """A new webhook signing secret; for 24 h deliveries are signed with the previous one as well."""
        found = await self.upstream.account.RotateWebhookSecret(jobs_pb2.WebhookSecretRequest(),
                                                                metadata=_metadata(request),
                                                                timeout=self.config.connect_timeout)
        return JSONResponse(_secret_reply(found), headers=_NO_STORE)

    async def healthz(self) -> JSONResponse:
        """Liveness: 200 while the process runs."""
        return JSONResponse({"status": "ok"})

    async def readyz(self) -> JSONResponse:
        """Readiness: 200 when the server's health check for "" is SERVING, else 503."""
        try:
            resp = await self.upstream.health.Check(health_pb2.HealthCheckRequest(service=""),
                                                    timeout=min(READY_TIMEOUT_S, self.config.connect_timeout))
        except grpc.aio.AioRpcError as exc:
            raise GatewayError("SERVICE_UNAVAILABLE", f"the hushwire server is not ready ({exc.code().name})") \
                from None
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            raise GatewayError("SERVICE_UNAVAILABLE", f"the hushwire server is {name}")
        return JSONResponse({"status": "ok"})

    # -- pages ---------------------------------------------------------------------------------------

    async def console(self, request: Request) -> Response:
        return console_page(request, self.public_url)

    async def live(self, websocket: WebSocket) -> None:
        await LiveBridge(self.upstream.enhancers(), self.public_url, self.config.connect_timeout)(websocket)

    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="hushwire API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            # Swagger UI would otherwise load a validity badge from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )


# A secret in a reply: no cache, the browser's own included, may keep a copy.
_NO_STORE = {"Cache-Control": "no-store"}


def _secret_reply(found: jobs_pb2.WebhookSecret) -> dict[str, Any]:
    return {"secret": found.secret, "previous_valid_until": found.previous_valid_until or None}


def _version() -> str:
    try:
        return importlib_metadata.version("hushwire")
    except importlib_metadata.PackageNotFoundError:
        return "0"


def _install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return exc.response()

    async def rpc_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return from_rpc_error(exc).response()

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            response = error_response(404, "NOT_FOUND", "no such route")
        elif exc.status_code == 405:
            response = error_response(405, "METHOD_NOT_ALLOWED", "method not allowed on this route")
        else:
            response = error_response(exc.status_code, "INVALID_REQUEST", str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, "INVALID_REQUEST", f"{where}: {first.get('msg', 'invalid request')}")

    async def client_gone(request: Request, _exc: Exception) -> Response:
        log.info("client went away during %s %s", request.method, request.url.path)
        return error_response(400, "INVALID_REQUEST", "the client disconnected")

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(grpc.aio.AioRpcError, rpc_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_gone)


def create_app(config: GatewayConfig) -> FastAPI:
    """The ASGI app. Its gRPC channel to ``config.grpc_target`` opens in the lifespan start-up."""
    gw = _Gateway(config, public_url_of(config, config.gateway_port))
    app = FastAPI(
        title="hushwire", version=_version(), lifespan=gw.lifespan,
        description="Speech enhancement: upload audio files, poll their jobs, download the results. "
                    "DeepHearing-compatible.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    secured: list[dict[str, list[str]]] = [{"ApiKey": []}]
    route = app.add_api_route
    route("/enhance", gw.enhance, methods=["POST"], tags=["files"], summary="Enhance files",
          response_class=JSONResponse,
          openapi_extra={"requestBody": ENHANCE_BODY, "parameters": ENHANCE_PARAMETERS, "security": secured},
          responses={200: reply("job ids by form field name (a retry with the same Idempotency-Key gets the "
                                "same reply)", "EnhanceReply"),
                     409: reply("IDEMPOTENCY_CONFLICT: the Idempotency-Key was used with a different request, or "
                                "its first request is still running", "Error"),
                     **ERROR_REPLIES})
    stat_replies: dict[int | str, dict[str, Any]] = {200: reply("the job's status", "JobStat"), **ERROR_REPLIES}
    for method in ("GET", "POST"):
        route("/stat/jobs/{job_id}", gw.stat, methods=[method], tags=["files"], summary="Job status",
              operation_id=f"stat_job_{method.lower()}", response_class=JSONResponse,
              openapi_extra={"security": secured}, responses=stat_replies)
    route("/results/{job_id}", gw.result, methods=["GET"], tags=["files"], summary="Download a result",
          response_class=StreamingResponse,
          responses={200: reply("the enhanced audio file", None), **ERROR_REPLIES})
    route("/me", gw.me, methods=["GET"], tags=["account"], summary="Who owns this key",
          response_class=JSONResponse, openapi_extra={"security": secured},
          responses={200: reply("the key's user", "Me"), **ERROR_REPLIES})
    route("/me/webhook-secret", gw.webhook_secret, methods=["GET"], tags=["account"],
          summary="Read the webhook signing secret", response_class=JSONResponse, openapi_extra={"security": secured},
          responses={200: reply("the user's webhook secret", "WebhookSecret"), **ERROR_REPLIES})
    route("/me/webhook-secret", gw.rotate_webhook_secret, methods=["POST"], tags=["account"],
          summary="Rotate the webhook signing secret", response_class=JSONResponse,
          openapi_extra={"security": secured},
          responses={200: reply("the new secret (the previous one signs too for 24 h)", "WebhookSecret"),
                     **ERROR_REPLIES})
    route("/healthz", gw.healthz, methods=["GET"], tags=["probes"], summary="Liveness",
          response_class=JSONResponse, responses={200: reply("alive", "Status")})
    route("/readyz", gw.readyz, methods=["GET"], tags=["probes"], summary="Readiness",
          response_class=JSONResponse, responses={200: reply("ready", "Status"), **ERROR_REPLIES})
    route("/", gw.console, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    route("/console/limits.json", console_limits, methods=["GET"], include_in_schema=False)
    app.mount("/console", ConsoleAssets(), name="console-assets")
    app.add_api_websocket_route("/live", gw.live)
    route("/docs", gw.docs, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_ASSETS), name="swagger-assets")

    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi_document(app))

    route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False)

    async def metrics() -> Response:
        return metrics_response()

    route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    _install_error_handlers(app)
    app.add_middleware(_CatchAll)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(_ConnectionLimit, limit=config.max_connections)   # outermost: a refusal costs nothing
    return app


# -- run ---------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM/SIGINT end it gracefully with exit status 0 (uvicorn
    re-raises the signal after shutdown, which would kill the process with it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(sig: int, frame: FrameType | None) -> None:
            log.info("shutting down (signal %d)", sig)
            self.handle_exit(sig, frame)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> list[socket.socket]:
    """One socket per address ``host`` names (``localhost``: 127.0.0.1 and ::1), all on one port,
    as the gRPC server listens."""
    socks, _ = bind_all(host, port)
    for sock in socks:
        sock.set_inheritable(True)
    return socks


async def _serve(server: uvicorn.Server, sockets: Sequence[socket.socket], url: str) -> None:
    task = asyncio.ensure_future(server.serve(sockets=list(sockets)))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        log.info("listening on %s", url)
    await task


def _check_tls_files(config: GatewayConfig) -> None:
    """Unreadable or mismatched TLS files are a one-line ConfigError before anything starts."""
    if config.gateway_tls_cert and config.gateway_tls_key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.gateway_tls_cert,
                                                                               config.gateway_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"gateway --tls-cert/--tls-key: cannot use {config.gateway_tls_cert}: {exc}") \
                from None
    tls = ClientTLS.of(config.grpc_tls_ca, config.grpc_tls_cert, config.grpc_tls_key)
    if tls is not None:
        try:
            tls.credentials()
        except HushwireClientError as exc:
            raise ConfigError(f"gateway --grpc-tls-*: {exc.msg}") from None


def run(config: GatewayConfig) -> int:
    """Bind, serve until SIGTERM/SIGINT, and return the exit status. With port 0 the port the system
    gave is the one logged (``listening on http://HOST:PORT``) and used in result URLs."""
    if not config.public_url and config.gateway_host in WILDCARD_HOSTS:
        public_url_of(config, config.gateway_port)   # raises the one-line ConfigError
    _check_tls_files(config)
    socks = _bind(config.gateway_host, config.gateway_port)
    port = socks[0].getsockname()[1]
    config = dataclasses.replace(config, gateway_port=port)
    app = create_app(config)
    # uvicorn's own TLS (the ssl module): HTTPS, and wss:// for /live, when the gateway has a certificate.
    # timeout_keep_alive: uvicorn's own default (5 s) is httpx's idle expiry too, so a client reusing a
    # connection idle just under 5 s met the gateway's close and got no reply (the soak's ReadError).
    server = _Server(uvicorn.Config(app, log_config=None, lifespan="on", server_header=False,
                                    timeout_keep_alive=config.http_keepalive_seconds,
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, ws_max_size=MAX_MESSAGE_BYTES,
                                    ssl_certfile=config.gateway_tls_cert, ssl_keyfile=config.gateway_tls_key))
    url = f"{_scheme(config)}://{_url_host(config.gateway_host)}:{port}"
    try:
        asyncio.run(_serve(server, socks, url))
    finally:
        for sock in socks:
            sock.close()
    return 0
