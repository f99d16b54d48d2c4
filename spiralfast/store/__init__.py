"""The event store: rows, the store ABC, one SQLite layer (shared with the old persistence
API), PostgreSQL, the writer thread, history and the durable delivery cursor."""
