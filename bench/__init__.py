"""Benchmarks (not tests): `make bench` writes figures to bench/results/."""
