"""Benchmarking and parity measurement."""
