"""Evaluation: a benchmark registry (`benchmarks.py`; the shapes world is its first entry), the
generation helper every benchmark prompts through, and the shared metrics."""
