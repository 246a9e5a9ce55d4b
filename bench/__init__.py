"""hushwire's benchmarks: run each module with ``python -m bench.<name>`` from the repo root (see README.md)."""
