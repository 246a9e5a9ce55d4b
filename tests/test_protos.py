"""The committed stubs are exactly what ``scripts/gen_protos.py`` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "protos"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    for rel in generated:
        assert (committed / rel).read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} drifted from its .proto: run `python scripts/gen_protos.py` and commit the result"
        )
    on_disk = sorted(p.relative_to(committed) for p in committed.rglob("*_pb2*.py*"))
    assert on_disk == [g for g in generated if g.name.endswith((".py", ".pyi"))], "stale generated files"


def test_contract_names() -> None:
    from hushwire.v1 import enhancer_pb2

    svc = enhancer_pb2.DESCRIPTOR.services_by_name["Enhancer"]
    m = svc.methods_by_name["StreamEnhance"]
    assert m.client_streaming and m.server_streaming
    req = enhancer_pb2.StreamEnhanceRequest.DESCRIPTOR
    assert [f.name for f in req.oneofs_by_name["msg"].fields] == ["config", "audio", "update"]
    assert enhancer_pb2.SampleEncoding.Name(0) == "SAMPLE_ENCODING_UNSPECIFIED"
    assert enhancer_pb2.SampleEncoding.Value("SAMPLE_ENCODING_PCM16") == 1
    assert enhancer_pb2.SampleEncoding.Value("SAMPLE_ENCODING_FLOAT32") == 2
    cfg = enhancer_pb2.StreamConfig.DESCRIPTOR.fields_by_name
    assert cfg["attenuation_limit_db"].has_presence
    resp = enhancer_pb2.StreamEnhanceResponse.DESCRIPTOR.fields_by_name
    assert {"audio", "algorithmic_delay_samples", "voice_probability"} <= set(resp)


def test_dsp_imports_without_grpc() -> None:
    code = ("import sys; sys.modules['grpc'] = None; "
            "import server.dsp, hushwire.contract.pcm, hushwire.contract.limits; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
