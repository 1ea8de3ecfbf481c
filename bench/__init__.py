"""Benchmark of the jobs plugin against the bare LiteLLM proxy: ``python -m bench.run``."""
