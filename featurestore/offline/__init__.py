"""The offline side: event and row files, file ingest, point-in-time rows from files, the
demo data."""
