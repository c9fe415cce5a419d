"""Stages of benchmarks/gpu_check.py and the test clips the benchmarks share."""
