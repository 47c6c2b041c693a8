"""Ingest: a source spec's URL list -> img2dataset -> validated webdataset shards -> manifest.json,
and reading those shards back. `ingest_source` is the entry point (`source.py`); the rest of the
package is its steps: convert, prepare, run (img2dataset in its worker process), checks, validate,
manifest, outputs, report, and the frozen-feature cache (`features.py`).
"""

from tasks.ingest.read import load_manifest, read_records
from tasks.ingest.source import IngestError, LowSuccessRate, ingest_source

__all__ = ["IngestError", "LowSuccessRate", "ingest_source", "load_manifest", "read_records"]
