"""One training stage (stage.py) from its pieces (recipe.py); its torchrun launch (launch.py); FLOPs by
component (flops.py); the throughput figures (throughput.py) and progress bar (progress.py) of its steps."""
