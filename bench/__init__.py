"""Benchmarks: `python -m bench.translate`, `python -m bench.train`, `python -m bench.gpu_ul2`."""
