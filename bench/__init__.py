"""Flywheel's gateway benchmark: overhead and throughput against a floor and peer gateways.

Run ``.venv/bin/python -m bench run`` from the repository root (see ``bench/README.md``).
"""
