"""Optuna studies: sessions, the worker loop, one trial, the study in MLflow, storages, results,
exports and plots."""
