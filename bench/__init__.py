"""Benchmark of the jobs plugin against the bare LiteLLM proxy (issue 8): ``python -m bench.run``."""
