from __future__ import annotations

from pathlib import Path

import pytest

from hushwire.settings import ConfigError, default_data_dir, resolve
from server.config import ServerConfig


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = tmp_path / "hushwire.toml"
    cfg.write_text('[server]\nport = 6000\nhost = "::1"\ndrain_seconds = 3\n[limits]\nmax_upload_bytes = "5 MB"\n')
    env = {"HUSHWIRE_PORT": "7000"}
    names = ["port", "host", "drain_seconds", "max_upload_bytes", "log_level"]
    out = resolve(names, {"port": None}, env=env, config_file=cfg)
    assert out == {"port": 7000, "host": "::1", "drain_seconds": 3.0, "max_upload_bytes": 5_000_000,
                   "log_level": "info"}
    out = resolve(names, {"port": "8000"}, env=env, config_file=cfg)
    assert out["port"] == 8000
    out = resolve(names, {}, env={}, config_file=None)
    assert out["port"] == 50051 and out["host"] == "127.0.0.1" and out["max_upload_bytes"] == 200_000_000


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "/srv/hw"\n')
    assert resolve(["data_dir"], {}, env={"HUSHWIRE_CONFIG": str(cfg)})["data_dir"] == Path("/srv/hw")


def test_default_data_dir_follows_xdg() -> None:
    assert default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/hushwire")
    assert resolve(["data_dir"], {}, env={"XDG_DATA_HOME": "/y"})["data_dir"] == Path("/y/hushwire")


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HUSHWIRE_PORT"):
        resolve(["port"], {}, env={"HUSHWIRE_PORT": "eighty"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(["port"], {}, env={}, config_file=bad)


def test_sqlite_url() -> None:
    assert ServerConfig(data_dir=Path("/d")).sqlite_path == Path("/d/hushwire.db")
    assert ServerConfig(data_dir=Path("/d"), database_url="sqlite:///var/x.db").sqlite_path == Path("/var/x.db")
    with pytest.raises(ConfigError):
        _ = ServerConfig(data_dir=Path("/d"), database_url="mysql://h/db").sqlite_path


def test_store_url_is_what_every_process_opens(tmp_path: Path) -> None:
    pg = "postgresql://hw:pw@127.0.0.1:5432/hushwire?sslmode=disable"
    assert ServerConfig(data_dir=Path("/d"), database_url=pg).store_url == pg
    assert ServerConfig(data_dir=Path("/d"), database_url="postgres://h/db").store_url == "postgres://h/db"
    assert ServerConfig(data_dir=Path("/d")).store_url == "sqlite:///d/hushwire.db"
    relative = ServerConfig(data_dir=Path("rel")).store_url  # workers may not share the working directory
    assert relative == f"sqlite://{Path.cwd() / 'rel' / 'hushwire.db'}"
    with pytest.raises(ConfigError, match="PostgreSQL, not a SQLite file"):
        _ = ServerConfig(data_dir=Path("/d"), database_url=pg).sqlite_path


def test_config_show_hides_a_database_password(tmp_path: Path) -> None:
    from conftest import run_cli

    out = run_cli("config", "--database-url", "postgresql://hw:s3cret@db:5432/hushwire").stdout
    assert "database_url = postgresql://hw:***@db:5432/hushwire" in out and "s3cret" not in out


def test_operations_doc_config_reference_is_current() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_a_minimum_ping_interval_that_refuses_the_clients_is_an_error() -> None:
    """hushwire's clients ping every 30 s on a quiet stream (hushwire.contract.keepalive): a server whose
    minimum is longer would answer their third ping with GOAWAY too_many_pings and end their streams."""
    from hushwire.contract.keepalive import KEEPALIVE_INTERVAL_S

    assert ServerConfig(data_dir=Path("/d"), keepalive_min_ping_seconds=KEEPALIVE_INTERVAL_S)
    with pytest.raises(ConfigError, match="--keepalive-min-ping-seconds"):
        ServerConfig(data_dir=Path("/d"), keepalive_min_ping_seconds=KEEPALIVE_INTERVAL_S + 1)
