"""One module per schema revision, applied in order by ``accounts.schema.upgrade``."""
