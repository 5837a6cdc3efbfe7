"""Benchmarks: the platform side by side with a bare floor and a straightforward peer (see docs/BENCHMARKS.md)."""
