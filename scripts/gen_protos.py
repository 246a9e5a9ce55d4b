"""Regenerate the Python code for protos/ (the one command; never edit the output).

    python scripts/gen_protos.py            # writes protos/hushwire/v1/*_pb2*.py
    python scripts/gen_protos.py --out DIR  # writes into DIR (the drift test uses this)

The import root is ``protos/``, so generated modules import as ``hushwire.v1.X_pb2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "hushwire" / "v1").glob("*.proto"))


def generate(out: Path) -> None:
    import importlib.resources

    from grpc_tools import protoc  # build-time only

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    for proto in proto_files():
        rel = proto.relative_to(PROTO_ROOT)
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(rel),
        ]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed on {rel} (exit {code})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
