"""The work, one package per concern: ingest/, data/ (with formats/), train/, evaluate/, and the
modules tracking, shapes_world, loopback and state. Plain functions, importable and testable
without Prefect; flows/ wraps them. tasks may import model and data_specs, never flows."""
