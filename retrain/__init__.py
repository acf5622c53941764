"""Offline path: datasets, fine-tuning jobs, evaluation (see ARCHITECTURE)."""
