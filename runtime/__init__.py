"""Lean, torch-free inference runtime: preprocessing, tokenization, readers, backends, Predictor, bench.

Nothing in this package may import torch (tests/runtime/test_no_torch.py enforces it).
"""
