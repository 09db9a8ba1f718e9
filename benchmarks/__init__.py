"""Throughput and accuracy measurements, side by side with reference code (not part of the tests)."""
