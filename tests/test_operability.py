"""Metrics, JSON logs and config: scrape a real server after real traffic; parse what it logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, free_port, run_cli, scrape_metrics, start_server
from prometheus_client.parser import text_string_to_metric_families

from client import EnhancerClient, HushwireClientError, JobsClient


def test_metrics_and_json_logs_follow_real_traffic(tmp_path: Path) -> None:
    key = create_key(tmp_path, "--name", "ops")
    port = free_port()
    srv = start_server(tmp_path, "--metrics-port", str(port), "--log-format", "json")
    try:
        before = scrape_metrics(port)
        assert before[("hushwire_streams_open", ())] == 0
        x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.05
        with EnhancerClient(srv.target, key) as c:
            c.enhance(x, 16000, chunk_ms=20)  # 50 chunks, 1 s of audio
            with pytest.raises(HushwireClientError):
                EnhancerClient(srv.target, "nope").enhance(x[:160], 16000)
        src = tmp_path / "in.wav"
        sf.write(str(src), np.zeros((24000, 2), np.float32), 16000)  # 1.5 s stereo: 3 billed seconds
        with JobsClient(srv.target, key) as j:
            job = j.wait(j.submit(src).job_id, timeout=60)
        m = scrape_metrics(port)
        assert m[("hushwire_audio_seconds_total", (("path", "stream"),))] == pytest.approx(1.0)
        assert m[("hushwire_audio_seconds_total", (("path", "job"),))] == pytest.approx(3.0)
        assert m[("hushwire_chunk_processing_seconds_count", ())] == 50
        assert m[("hushwire_denoiser_realtime_factor_count", ())] == 50
        assert m[("hushwire_stream_batch_chunks_sum", ())] == 50  # one stream: 50 batches of one chunk
        assert m[("hushwire_stream_batch_chunks_count", ())] == 50
        # The denoiser's own CPU (bench.streams subtracts it): some, and within the batches' wall time.
        assert 0 < m[("hushwire_stream_denoiser_cpu_seconds_total", ())] \
            <= m[("hushwire_chunk_processing_seconds_sum", ())] + 0.01
        assert m[("hushwire_jobs_completed_total", ())] == 1
        assert m[("hushwire_jobs_failed_total", ())] == 0
        assert m[("hushwire_job_processing_seconds_count", ())] == 1
        assert m[("hushwire_billed_seconds_total", (("uid", "1"),))] == pytest.approx(4.0)
        assert m[("hushwire_key_billed_seconds_total", (("key_id", "1"),))] == pytest.approx(4.0)
        assert m[("hushwire_errors_total", (("code", "API_KEY_NOT_FOUND"),))] == 1
        assert m[("hushwire_streams_open", ())] == 0
        assert m[("hushwire_jobs_queued", ())] == 0
        assert m[("hushwire_oldest_pending_job_age_seconds", ())] == 0
        assert m[("hushwire_jobs", (("state", "completed"),))] == 1
        labels = {v for (_, ls) in m for (_, v) in ls}
        assert job.job_id not in labels and key not in labels
    finally:
        assert srv.stop() == 0
    events = [json.loads(line) for line in srv.log.splitlines() if line.strip()]  # every line is JSON
    assert any(e["msg"].startswith("listening on 127.0.0.1:") for e in events)
    closed = [e for e in events if e.get("event") == "stream closed"]
    assert closed and closed[0]["chunks"] == 50 and closed[0]["uid"] == 1 and closed[0]["rate"] == 16000
    assert closed[0]["max_processing_ms"] >= closed[0]["mean_processing_ms"] > 0
    states = [e["event"] for e in events if e.get("job_id") == job.job_id]
    assert states[:1] == ["job submitted"] and "job completed" in states and "job processing" in states
    done = next(e for e in events if e.get("event") == "job completed")
    assert done["billed_seconds"] == 3.0 and done["file_name"] == "in.wav"
    assert key not in srv.log


def test_bad_config_fails_fast_with_the_key_name(tmp_path: Path) -> None:
    cfg = tmp_path / "hushwire.toml"
    cfg.write_text('[server]\nprot = 5\n')
    bad = run_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown key 'server.prot'" in bad.stderr and "Traceback" not in bad.stderr
    cfg.write_text('[server]\nport = "eighty"\n')
    bad = run_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "server.port" in bad.stderr
    cfg.write_text('[server]\nport = 6000\nsigning_secret = "s3cret"\n[log]\nformat = "json"\n')
    out = run_cli("config", "show", "--config", str(cfg)).stdout
    assert "port = 6000" in out and "log_format = json" in out and "s3cret" not in out and "signing_secret = ***" in out


def test_gateway_metrics_count_requests_and_errors(tmp_path: Path) -> None:
    import httpx
    from test_gateway import start_gateway

    key = create_key(tmp_path)
    srv = start_server(tmp_path)
    gw = start_gateway(tmp_path, srv.target)
    try:
        src = tmp_path / "a.wav"
        sf.write(str(src), np.zeros(8000, np.float32), 16000)
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            with open(src, "rb") as f:
                job_id = http.post("/enhance", headers={"Authorization": key}, files={"f": f}).json()["f"]
            assert http.get(f"/stat/jobs/{job_id}", headers={"Authorization": key}).status_code == 200
            assert http.get("/me", headers={"Authorization": "wrong"}).status_code == 401
            text = http.get("/metrics").text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        assert samples[("hushwire_http_requests_total",
                        (("method", "POST"), ("route", "/enhance"), ("status", "200")))] == 1
        assert samples[("hushwire_http_requests_total",
                        (("method", "GET"), ("route", "/stat/jobs/{job_id}"), ("status", "200")))] == 1
        assert samples[("hushwire_errors_total", (("code", "API_KEY_NOT_FOUND"),))] == 1
        labels = {v for (_, ls) in samples for (_, v) in ls}
        assert job_id not in labels and key not in labels
    finally:
        gw.stop()
        assert srv.stop() == 0


def test_health_is_not_serving_until_the_workers_are_up(tmp_path: Path) -> None:
    import subprocess
    import time

    import grpc
    from conftest import HUSHWIRE, ROOT
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([*HUSHWIRE, "serve", "--port", str(port), "--data-dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT)
    seen: list[tuple[int, bool]] = []  # (status, was "listening on" logged yet)
    try:
        fast_retry = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                      ("grpc.max_reconnect_backoff_ms", 50)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=fast_retry) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service="hushwire.v1.Jobs"), timeout=0.5).status
                except grpc.RpcError:
                    time.sleep(0.01)
                    continue
                seen.append((status, "listening on" in log.read_text()))
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.01)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    statuses = [s for s, _ in seen]
    assert statuses[0] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses[:3]
    assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    assert not any(listening for s, listening in seen if s == health_pb2.HealthCheckResponse.NOT_SERVING)
