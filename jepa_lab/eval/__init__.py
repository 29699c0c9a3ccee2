"""Evaluation of a trained encoder: the linear probe, kNN, baselines and collapse diagnostics."""
