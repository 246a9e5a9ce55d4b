"""Held jobs are swept (issue #18, item 4): a real gateway SIGKILLed mid-multipart leaves a held job,
which the server deletes with its upload once ``--hold-seconds`` pass without activity; an honest
slow upload of several files is not cut, because the gateway renews the holds as the body flows."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from conftest import create_key, start_server
from test_gateway import start_gateway

from server.store import Store

HOLD_S = 1.5
BOUNDARY = "hushwire-held-jobs-test"


def _wav_bytes(path: Path, seconds: float, seed: int = 0) -> bytes:
    x = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.05).astype(np.float32)
    sf.write(str(path), x, 16000, subtype="PCM_16")
    return path.read_bytes()


def _part_head(name: str, file_name: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()


def _rows_and_uploads(data_dir: Path) -> tuple[int, list[Path]]:
    store = Store(data_dir / "hushwire.db")
    try:
        rows = sum(store.job_stats()[0].values())
    finally:
        store.close()
    uploads = data_dir / "blobs" / "uploads"
    return rows, [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []


def _wait(what: str, cond: object, timeout: float) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_gateway_killed_mid_multipart_leaves_a_held_job_that_is_swept(tmp_path: Path) -> None:
    key = create_key(tmp_path, "--name", "a")
    srv = start_server(tmp_path, "--hold-seconds", str(HOLD_S))
    gw = start_gateway(tmp_path, srv.target)
    try:
        first = _wav_bytes(tmp_path / "one.wav", 0.5)
        second = _wav_bytes(tmp_path / "two.wav", 2.0, seed=1)
        body = (_part_head("a", "one.wav") + first + b"\r\n" + _part_head("b", "two.wav") + second + b"\r\n"
                + f"--{BOUNDARY}--\r\n".encode())
        sent = len(_part_head("a", "one.wav") + first + b"\r\n" + _part_head("b", "two.wav")) + 1000
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            sent_at = time.monotonic()   # the job is submitted after this, so swept no sooner than HOLD_S later
            conn.sendall((f"POST /enhance HTTP/1.1\r\nHost: {host}\r\nAuthorization: {key}\r\n"
                          f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:sent])
            # The first file is accepted and held while the second one streams...
            _wait("the first file's held job", lambda: "job submitted" in srv.log and "held=True" in srv.log, 30)
            assert _rows_and_uploads(tmp_path)[0] == 1
            gw.stop(sig=signal.SIGKILL)   # ...and the gateway dies before it could start or cancel it.
            took = _wait("the sweep", lambda: "held job swept" in srv.log, 30)
        swept_at = time.monotonic()
        assert swept_at - sent_at >= HOLD_S, "swept before its hold could have run out"
        assert took < HOLD_S + 10
        assert _rows_and_uploads(tmp_path) == (0, [])
        assert "file_name='one.wav'" in srv.log.split("held job swept", 1)[1].splitlines()[0]
    finally:
        gw.stop(sig=signal.SIGKILL)
        assert srv.stop() == 0, srv.log


def test_a_slow_honest_upload_of_several_files_is_not_cut(tmp_path: Path) -> None:
    """The body takes about four holds to arrive; the gateway's renewals keep the first file's job."""
    key = create_key(tmp_path, "--name", "a")
    srv = start_server(tmp_path, "--hold-seconds", str(HOLD_S))
    gw = start_gateway(tmp_path, srv.target)
    try:
        first = _wav_bytes(tmp_path / "one.wav", 0.5)
        second = _wav_bytes(tmp_path / "two.wav", 2.0, seed=1)

        def body() -> Iterator[bytes]:
            yield _part_head("a", "one.wav") + first + b"\r\n" + _part_head("b", "two.wav")
            pieces = np.array_split(np.frombuffer(second, np.uint8), 24)
            for piece in pieces:   # 24 x 0.25 s = 6 s = 4 holds
                time.sleep(0.25)
                yield piece.tobytes()
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        with httpx.Client(base_url=gw.url, timeout=60, trust_env=False) as http:
            r = http.post("/enhance", content=body(), headers={
                "Authorization": key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            assert r.status_code == 200, r.text
            ids = r.json()
            assert set(ids) == {"a", "b"}
            for job_id in ids.values():
                _wait("the job to complete", lambda job_id=job_id: http.get(
                    f"/stat/jobs/{job_id}", headers={"Authorization": key}).json()["job_status"] == "completed", 60)
        assert "held job swept" not in srv.log
    finally:
        assert gw.stop() == 0, gw.log
        assert srv.stop() == 0, srv.log
