"""All SQL lives in this package: one module per kind of record over one `Database`."""

from assistant.store.db import Database, utcnow

__all__ = ["Database", "utcnow"]
