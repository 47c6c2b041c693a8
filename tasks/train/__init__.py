"""One training stage (stage.py) and the throughput figures every step reports (throughput.py)."""
