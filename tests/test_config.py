from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hushwire.settings import SETTINGS, ConfigError, default_data_dir, resolve
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


def _class_defaults(path: Path, name: str) -> dict[str, ast.expr]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    return {n.target.id: n.value for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None}


def _literal(node: ast.expr) -> bool:
    """A number or string written out (``60.0``, ``10 * 1000**3``, ``"127.0.0.1:50051"``); None is no value."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return all(_literal(n) for n in ast.iter_child_nodes(node) if isinstance(n, ast.expr))
    return False


def test_each_default_is_written_once() -> None:
    """A default is one fact: the settings table's (hushwire.settings.default), or the contract's, which
    the table takes. No config class, timeout bundle or client signature writes a number of its own
    beside it, so a changed default changes everywhere (download_idle_seconds was 60.0 in three files)."""
    from conftest import ROOT

    classes = [("server/config.py", "ServerConfig"), ("gateway/config.py", "GatewayConfig"),
               ("cli/main.py", "ClientConfig"), ("server/servicers.py", "StreamTimeouts"),
               ("gateway/upload.py", "UploadLimits")]
    written = [f"{path}: {cls}.{field}" for path, cls in classes
               for field, value in _class_defaults(ROOT / path, cls).items() if _literal(value)]
    # The client library cannot import the settings table: its defaults are the contract's.
    for path in sorted((ROOT / "client").glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                args = fn.args.args[len(fn.args.args) - len(fn.args.defaults):] + fn.args.kwonlyargs
                values = list(fn.args.defaults) + list(fn.args.kw_defaults)
                for arg, value in zip(args, values, strict=True):
                    empty = isinstance(value, ast.Constant) and value.value == ""   # "no target": not a default
                    if value is not None and arg.arg in ("target", "connect_timeout", "budget_s") \
                            and _literal(value) and not empty:
                        written.append(f"client/{path.name}: {fn.name}({arg.arg}=...)")
    # The table itself takes the contract's numbers rather than repeating them.
    table = ast.parse((ROOT / "protos" / "hushwire" / "settings.py").read_text())
    contract = {"slow_consumer_seconds", "keepalive_seconds", "keepalive_timeout_seconds",
                "keepalive_min_ping_seconds", "connect_timeout", "target", "grpc_target"}
    for call in ast.walk(table):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Setting" \
                and isinstance(call.args[0], ast.Constant) and call.args[0].value in contract \
                and _literal(call.args[3]):
            written.append(f"settings.py: {call.args[0].value}")
    assert written == []
    # And the classes' defaults are the table's values.
    assert ServerConfig(data_dir=Path("x")).download_idle_seconds == SETTINGS["download_idle_seconds"].default
    assert ServerConfig(data_dir=Path("x")).max_upload_bytes == 200_000_000
