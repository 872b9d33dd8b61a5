"""Importers: foreign trace formats (OTLP JSON/protobuf, ...) read into tracekit's span records and loaded by ingest."""
