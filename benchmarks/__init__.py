"""Benchmarks: is the orchestration invisible next to the cloud? Run them all with ``scripts/bench``."""
