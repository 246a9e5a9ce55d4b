"""The one command-line entry point: ``hushwire serve | gateway | keys | enhance | denoise | eval | jobs | mic |
config``.

It serves every role (server, gateway, client), so it lives above them all: nothing imports it.
Each subcommand resolves its settings through :mod:`hushwire.settings` (flag > environment >
config file > default) and imports only what it needs, so ``hushwire denoise`` never loads grpc.
Errors a user can fix are printed as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hushwire.settings import SECRET_SETTINGS, SETTINGS, ConfigError, check_client_tls, default, resolve
from server.config import ServerConfig, one_blas_thread

__all__ = ["ClientConfig", "main"]

_STORE_SETTINGS = ["data_dir", "database_url", "blob_url", "key_pepper", "key_pepper_previous"]
_SERVER_SETTINGS = [
    *_STORE_SETTINGS, "host", "port", "drain_seconds", "signing_secret_file", "signing_secret",
    "signing_secret_previous", "log_level",
    "log_format",
    "max_streams_per_user", "max_streams", "live_cpu_budget", "max_queued_jobs_per_user",
    "max_bytes_per_day_per_user",
    "max_audio_seconds_per_day_per_user", "max_idempotency_keys_per_user", "max_upload_bytes",
    "max_upload_seconds", "store_timeout", "lease_seconds", "hold_seconds", "metrics_port", "workers", "processes",
    "stream_batch_ms",
    "health_http_port", "metrics_host", "health_http_host", "tls_cert", "tls_key", "tls_client_ca",
    "server_public_url", "webhook_allow", "webhook_base_delay_seconds", "webhook_max_age_seconds",
    "slow_consumer_seconds", "stream_idle_seconds", "keepalive_seconds", "keepalive_timeout_seconds",
    "keepalive_min_ping_seconds", "download_idle_seconds",
]
_CLIENT_SETTINGS = ["target", "key", "connect_timeout", "client_tls_ca", "client_tls_cert", "client_tls_key"]
_SECRETS = SECRET_SETTINGS  # never flags: they would show in `ps`
_GATEWAY_SETTINGS = ["gateway_host", "gateway_port", "grpc_target", "public_url", "log_level", "log_format",
                     "connect_timeout", "max_upload_bytes", "upload_idle_seconds", "http_keepalive_seconds",
                     "gateway_tls_cert", "gateway_tls_key", "grpc_tls_ca", "grpc_tls_cert", "grpc_tls_key",
                     "grpc_connections", "max_connections"]


@dataclass(frozen=True)
class ClientConfig:
    """What a client command needs to reach the server."""

    target: str = default("target")
    key: str | None = default("key")
    connect_timeout: float = default("connect_timeout")
    client_tls_ca: str | None = default("client_tls_ca")
    client_tls_cert: str | None = default("client_tls_cert")
    client_tls_key: str | None = default("client_tls_key")

    def __post_init__(self) -> None:
        check_client_tls("--tls-", self.client_tls_ca, self.client_tls_cert, self.client_tls_key)


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _flag(parser: argparse.ArgumentParser, name: str, by_name: bool = False, **kw: Any) -> None:
    """Add the flag for setting ``name``; its default is None so resolve() can tell it was not given.
    The flag is the setting's own (``--tls-cert`` for ``gateway_tls_cert``), or with ``by_name`` the
    setting's name (``config show``, where every role's settings share one parser)."""
    s = SETTINGS[name]
    flag = "--" + name.replace("_", "-") if by_name else s.flag
    help_ = kw.pop("help", s.help)
    env = f" [env {s.env}]" if s.env else ""
    default = s.default if not callable(s.default) else "see docs"
    parser.add_argument(flag, dest=name, default=None, help=f"{help_}{env} (default: {default})", **kw)


def _common(parser: argparse.ArgumentParser, names: list[str], by_name: bool = False) -> None:
    parser.add_argument("--config", default=None, help="TOML config file [env HUSHWIRE_CONFIG]")
    for name in names:
        _flag(parser, name, by_name)


def _settings(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    flags = {n: getattr(args, n, None) for n in names}
    return resolve(names, flags, config_file=getattr(args, "config", None))


def _server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(**_settings(args, _SERVER_SETTINGS))


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(**_settings(args, _CLIENT_SETTINGS))


def _tls(cfg: ClientConfig) -> dict[str, Any]:
    """A client command's TLS files, as the client classes take them."""
    return {"tls_ca": cfg.client_tls_ca, "tls_cert": cfg.client_tls_cert, "tls_key": cfg.client_tls_key}


# -- serve -------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from server import signals

    signals.hold()   # a SIGTERM from here on is a normal stop, however far start-up has got
    import asyncio

    from server.app import serve
    from server.blobs import BlobStoreError
    from server.config import cores
    from server.group import run_group
    from server.logs import setup_logging
    from server.store import StoreError

    config = _server_config(args)
    setup_logging(config.log_level, config.log_format)
    processes = config.processes if config.processes is not None else cores()
    try:
        if processes > 1:
            return asyncio.run(run_group(config, processes))
        return asyncio.run(serve(config))
    except StoreError as exc:  # e.g. the database is unreachable at start-up: one line, exit 2
        raise UsageError(str(exc)) from None
    except BlobStoreError as exc:  # unreachable store, wrong credentials: checked before anything starts
        raise UsageError(f"blob store: {exc}") from None


# -- gateway ---------------------------------------------------------------------------------------


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.app import run
    from gateway.config import GatewayConfig
    from server.logs import setup_logging

    flags = {n: getattr(args, n, None) for n in _GATEWAY_SETTINGS}
    flags["gateway_host"] = args.host
    flags["gateway_port"] = args.port
    config = GatewayConfig(**resolve(_GATEWAY_SETTINGS, flags, config_file=args.config))
    setup_logging(config.log_level, config.log_format)
    return run(config)


# -- keys --------------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace) -> Any:
    from server.backends import open_store

    return open_store(ServerConfig(**_settings(args, _STORE_SETTINGS)))


def _cmd_keys(args: argparse.Namespace) -> int:
    from server.store import StoreError

    try:
        store = _open_store(args)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.keys_cmd == "create":
            if args.user is not None:
                name = store.user_name(args.user)
                if name is None:
                    raise UsageError(f"no user with uid {args.user}")
                uid = args.user
            else:
                name = args.name or "default"
                uid = store.create_user(name)
            key_id, key = store.create_key(uid)
            print(f"key_id={key_id} uid={uid} name={name}", file=sys.stderr)
            print(key)
        elif args.keys_cmd == "list":
            print(f"{'key_id':>6}  {'uid':>5}  {'name':<20}  {'created (UTC)':<20}  status")
            for k in store.list_keys():
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at))
                status = "revoked" if k.revoked_at else "active" if k.scheme == "hmac" else \
                    "active (hashed with a previous pepper until its next use)"
                print(f"{k.key_id:>6}  {k.uid:>5}  {k.name:<20}  {created:<20}  {status}")
        elif args.keys_cmd == "revoke":
            store.revoke_key(args.key_id)
            print(f"revoked key_id={args.key_id}", file=sys.stderr)
        elif args.keys_cmd == "webhook-secret":
            from server.webhooks import ROTATION_GRACE_S

            found = (store.rotate_webhook_secret if args.rotate else store.webhook_secrets)(args.user,
                                                                                           ROTATION_GRACE_S)
            if found.previous_valid_until:
                until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.previous_valid_until))
                print(f"uid={args.user}: the previous secret also signs until {until}", file=sys.stderr)
            print(found.current)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    return 0


# -- enhance (through the server) and denoise (local) -------------------------------------------


def _cmd_enhance(args: argparse.Namespace) -> int:
    from client.errors import HushwireClientError
    from client.files import from_stream_rate, read_audio, to_stream_rate, write_like
    from client.stream import EnhancerClient

    cfg = _client_config(args)
    audio = _read(args.input, read_audio)
    x, rate = to_stream_rate(audio.samples, audio.sample_rate)
    try:
        with EnhancerClient(cfg.target, cfg.key, connect_timeout=cfg.connect_timeout, **_tls(cfg)) as client:
            y = client.enhance(x, rate, chunk_ms=args.chunk_ms, realtime=args.realtime,
                               attenuation_limit_db=args.attenuation_limit)
    except HushwireClientError as exc:
        raise UsageError(str(exc)) from None
    write_like(args.output, from_stream_rate(y, rate, audio.sample_rate, audio.samples.shape[0]), audio)
    return 0


def _read(path: str, reader: Any) -> Any:
    import soundfile as sf

    try:
        return reader(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot read audio file {path}: {exc}") from None


def _cmd_denoise(args: argparse.Namespace) -> int:
    import numpy as np

    from client.files import from_stream_rate, read_audio, to_stream_rate, write_like
    from server.dsp import Denoiser

    audio = _read(args.input, read_audio)
    x, rate = to_stream_rate(audio.samples, audio.sample_rate)
    d = Denoiser(rate, x.shape[1], args.attenuation_limit)
    block = rate  # 1 s at a time keeps memory flat for long files
    parts = [d.process(x[i : i + block]) for i in range(0, x.shape[0], block)]
    parts.append(d.flush())
    y = np.concatenate(parts)
    if args.no_align:
        frames = x.shape[0] + d.latency_samples
        if rate != audio.sample_rate:
            frames = int(round(frames * audio.sample_rate / rate))
        write_like(args.output, from_stream_rate(y, rate, audio.sample_rate, frames), audio)
    else:
        y = y[d.latency_samples :]
        write_like(args.output, from_stream_rate(y, rate, audio.sample_rate, audio.samples.shape[0]), audio)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cli.evaluate import EvalError, main

    def progress(line: str) -> None:
        print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)

    try:
        report = main(args.noisy, args.clean, args.json, args.markdown, args.cmd, args.attenuation_limit,
                      progress if sys.stderr.isatty() else None)
    except EvalError as exc:
        raise UsageError(str(exc)) from None
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report, end="")
    return 0


# -- jobs -----------------------------------------------------------------------------------------


def _cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from client.errors import HushwireClientError
    from client.jobs import JobsClient, job_to_dict
    from hushwire.contract.job_status import COMPLETED, STATUS_NAMES

    cfg = _client_config(args)
    try:
        with JobsClient(cfg.target, cfg.key, timeout=cfg.connect_timeout, **_tls(cfg)) as jobs:
            if args.jobs_cmd == "submit":
                return _jobs_submit(args, jobs)
            if args.jobs_cmd == "list":
                for job in jobs.list():
                    print(json.dumps(job_to_dict(job)))
            elif args.jobs_cmd == "get":
                print(json.dumps(job_to_dict(jobs.get(args.job_id)), indent=2))
            elif args.jobs_cmd == "cancel":
                jobs.cancel(args.job_id)
                print(f"cancelled {args.job_id}", file=sys.stderr)
            elif args.jobs_cmd == "download":
                job = jobs.get(args.job_id)
                if STATUS_NAMES[job.status] != COMPLETED:
                    raise UsageError(f"job {args.job_id} is {STATUS_NAMES[job.status]}, not completed")
                _, path = jobs.download(args.job_id, args.out or ".")
                print(path)
    except HushwireClientError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _jobs_submit(args: argparse.Namespace, jobs: Any) -> int:
    """Upload each file with a progress bar; with --wait, follow processing and download the results."""
    import os

    from tqdm import tqdm

    from hushwire.contract.job_status import COMPLETED, STATUS_NAMES

    submitted = []
    for path in args.files:
        if not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
        with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=f"upload {os.path.basename(path)}",
                  leave=False, disable=args.quiet) as bar:
            job = jobs.submit(path, attenuation_limit_db=args.attenuation_limit, on_bytes=bar.update,
                              callback_url=args.callback_url)
        print(f"{path}\t{job.job_id}")
        submitted.append((path, job))
    if not args.wait:
        return 0
    failed = 0
    for path, job in submitted:
        with tqdm(total=100, unit="%", desc=f"denoise {os.path.basename(path)}", leave=False,
                  disable=args.quiet) as bar:
            def show(j: Any, bar: Any = bar) -> None:
                bar.set_postfix_str(STATUS_NAMES[j.status])
                bar.update(int(j.progress * 100) - bar.n)

            done = jobs.wait(job.job_id, timeout=args.timeout, on_update=show)
        if STATUS_NAMES[done.status] != COMPLETED:
            print(f"{path}\tfailed: {done.error.code}: {done.error.msg}", file=sys.stderr)
            failed += 1
            continue
        out_dir = args.out or os.path.dirname(os.path.abspath(path))
        os.makedirs(out_dir, exist_ok=True)
        _, result = jobs.download(job.job_id, out_dir)
        print(f"{path}\t{result}")
    return 1 if failed else 0


# -- mic ------------------------------------------------------------------------------------------


def _cmd_mic(args: argparse.Namespace) -> int:
    from client.mic import MicError, MicOptions, list_devices, run_mic

    try:
        if args.list_devices:
            print(list_devices())
            return 0
        cfg = _client_config(args)
        opts = MicOptions(
            target=cfg.target, key=cfg.key, connect_timeout=cfg.connect_timeout, input_device=args.input_device,
            output_device=args.output_device, rate=args.rate, channels=args.channels, block_ms=args.block_ms,
            attenuation_limit_db=args.attenuation_limit, record=args.record, record_raw=args.record_raw,
            playback=not args.no_playback, duration=args.duration, **_tls(cfg),
        )
        return run_mic(opts)
    except MicError as exc:
        raise UsageError(str(exc)) from None


# -- config --------------------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    values = _settings(args, [*_SERVER_SETTINGS, "gateway_host", "gateway_port", "grpc_target", "public_url",
                              *_CLIENT_SETTINGS])
    for name, value in values.items():
        if name in ("key", *_SECRETS) and value:
            value = "*** (set)"
        elif name == "database_url" and value:
            from server.store import redact

            value = redact(value)  # a password in the URL
        print(f"{name} = {value}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hushwire", description="Self-hostable speech enhancement.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    _common(serve, [n for n in _SERVER_SETTINGS if n not in _SECRETS])  # secrets: environment or file only
    serve.set_defaults(func=_cmd_serve)

    gw = sub.add_parser("gateway", help="run the HTTP gateway (DeepHearing-compatible REST)")
    gw.add_argument("--config", default=None, help="TOML config file [env HUSHWIRE_CONFIG]")
    gw.add_argument("--host", default=None, help="listen host [env HUSHWIRE_GATEWAY_HOST] (default: 127.0.0.1)")
    gw.add_argument("--port", default=None, help="listen port, 0 for any [env HUSHWIRE_GATEWAY_PORT] (default: 8080)")
    for name in ("grpc_target", "public_url", "log_level", "log_format", "connect_timeout", "max_upload_bytes",
                 "upload_idle_seconds", "http_keepalive_seconds", "gateway_tls_cert", "gateway_tls_key",
                 "grpc_tls_ca", "grpc_tls_cert", "grpc_tls_key", "grpc_connections", "max_connections"):
        _flag(gw, name)
    gw.set_defaults(func=_cmd_gateway)

    keys = sub.add_parser("keys", help="manage users and API keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create", help="create a key (a new user, or --user UID for rotation)")
    create.add_argument("--name", help="name of the new user")
    create.add_argument("--user", type=int, help="add the key to this existing user (uid)")
    lst = ksub.add_parser("list", help="list keys (never shows the keys themselves)")
    revoke = ksub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", type=int)
    secret = ksub.add_parser("webhook-secret", help="print a user's webhook signing secret (created on first use)")
    secret.add_argument("--user", type=int, required=True, help="the user's uid")
    secret.add_argument("--rotate", action="store_true",
                        help="make a new one (the previous one also signs for 24 h)")
    for k in (create, lst, revoke, secret):
        _common(k, [n for n in _STORE_SETTINGS if n not in _SECRETS])
    keys.set_defaults(func=_cmd_keys)

    enhance = sub.add_parser("enhance", help="denoise a file through the server's live stream")
    enhance.add_argument("input")
    enhance.add_argument("output")
    enhance.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length sent (default 20)")
    enhance.add_argument("--realtime", action="store_true", help="pace the chunks at real time")
    enhance.add_argument("--attenuation-limit", type=float, default=None, metavar="DB")
    _common(enhance, _CLIENT_SETTINGS)
    enhance.set_defaults(func=_cmd_enhance)

    denoise = sub.add_parser("denoise", help="denoise a file locally, no server")
    denoise.add_argument("input")
    denoise.add_argument("output")
    denoise.add_argument("--no-align", action="store_true", help="keep the algorithmic delay in the output")
    denoise.add_argument("--attenuation-limit", type=float, default=None, metavar="DB")
    denoise.set_defaults(func=_cmd_denoise)

    ev = sub.add_parser("eval", help="score hushwire (and optionally another command) on noisy/clean pairs",
                        description="Score hushwire's denoiser, and optionally another command, on a folder of "
                        "noisy/clean pairs matched by file name: PESQ-WB, ESTOI, SI-SDR and their change, the "
                        "measured delay, overall and per group (manifest.csv in --noisy, or GROUP__name files). "
                        "Needs the 'eval' extra: pip install 'hushwire[eval]'.")
    ev.add_argument("--noisy", required=True, metavar="DIR", help="the noisy inputs (and an optional manifest.csv)")
    ev.add_argument("--clean", required=True, metavar="DIR", help="the clean references, same file names")
    ev.add_argument("--json", default=None, metavar="FILE", help="write every figure here")
    ev.add_argument("--markdown", default=None, metavar="FILE", help="write the tables here (also on stdout)")
    ev.add_argument("--cmd", default=None, metavar="'COMMAND {in} {out}'",
                    help="also score this command, run once per pair ({in}, {out}, {sr}; no shell)")
    ev.add_argument("--attenuation-limit", type=float, default=None, metavar="DB", help="for hushwire's denoiser")
    ev.set_defaults(func=_cmd_eval)

    jobs = sub.add_parser("jobs", help="file jobs over gRPC: submit, list, get, cancel, download")
    jsub = jobs.add_subparsers(dest="jobs_cmd", required=True)
    submit = jsub.add_parser("submit", help="upload files as jobs (with --wait: download the results)")
    submit.add_argument("files", nargs="+", metavar="FILE")
    submit.add_argument("--attenuation-limit", type=float, default=None, metavar="DB")
    submit.add_argument("--wait", action="store_true", help="wait for each job and download its result")
    submit.add_argument("--out", default=None, metavar="DIR", help="where results go (default: next to the input)")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait per job (default 3600)")
    submit.add_argument("--quiet", action="store_true", help="no progress bars")
    submit.add_argument("--callback-url", default=None, metavar="URL",
                        help="POST each job's signed status JSON here when it completes or fails")
    jsub_list = jsub.add_parser("list", help="your jobs, newest first, one JSON object a line")
    get = jsub.add_parser("get", help="one job, as the REST status shows it")
    get.add_argument("job_id")
    cancel = jsub.add_parser("cancel", help="stop and delete a job")
    cancel.add_argument("job_id")
    download = jsub.add_parser("download", help="download a completed job's result")
    download.add_argument("job_id")
    download.add_argument("--out", default=None, metavar="PATH", help="file or directory (default: .)")
    for j in (submit, jsub_list, get, cancel, download):
        _common(j, _CLIENT_SETTINGS)
    jobs.set_defaults(func=_cmd_jobs)

    mic = sub.add_parser("mic", help="talk into the microphone, hear (and record) yourself denoised")
    mic.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    mic.add_argument("--input-device", default=None, help="index or name substring (default: system default)")
    mic.add_argument("--output-device", default=None, help="index or name substring (default: system default)")
    mic.add_argument("--rate", type=int, default=None, help="sample rate (default: the device's, if supported)")
    mic.add_argument("--channels", type=int, default=1)
    mic.add_argument("--block-ms", type=float, default=20.0, help="capture block length (default 20)")
    mic.add_argument("--attenuation-limit", type=float, default=None, metavar="DB")
    mic.add_argument("--record", default=None, metavar="OUT.wav", help="also write the denoised audio")
    mic.add_argument("--record-raw", default=None, metavar="IN.wav", help="also write the raw capture")
    mic.add_argument("--no-playback", action="store_true", help="do not play the denoised audio")
    mic.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this much audio")
    _common(mic, _CLIENT_SETTINGS)
    mic.set_defaults(func=_cmd_mic)

    config = sub.add_parser("config", help="config show: print the effective settings (secrets masked)")
    config.add_argument("action", nargs="?", choices=["show"], default="show")
    _common(config, [n for n in (*_SERVER_SETTINGS, "gateway_host", "gateway_port", "grpc_target", "public_url",
                                 *_CLIENT_SETTINGS) if n not in _SECRETS], by_name=True)
    config.set_defaults(func=_cmd_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    one_blas_thread()
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ConfigError) as exc:
        print(f"hushwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
