"""Offline path: datasets, fine-tuning jobs, evaluation (see docs/architecture.md)."""
