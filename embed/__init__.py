"""Embedding stage: sources, input pipeline, backbones, runtimes, bundle layout and the CLI."""
