"""Breed heads over embeddings: fitting, evaluation and safe persistence."""
