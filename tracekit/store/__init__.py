"""The store: the only package that holds SQL. Schema and migrations, ingest, typed queries, export."""
