"""Spec files (sources/, stages/, pipelines/), their typed models, the registries of the names
they may use (registry.py) and their JSON Schemas. Imports model's plain-data registries only:
loading a spec needs neither torch nor Prefect."""
