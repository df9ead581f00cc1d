"""The annotation workflow: the SQLite store, the review queue, ingest, export, corrections and the service the app and API share."""
