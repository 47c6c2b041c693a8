"""Prefect flows (ingest.py, pipeline.py) that decide order and placement, and the `vlmpipe`
command (cli/). Flows pass small JSON values; the work lives in tasks/."""
