"""One process per GPU: load an algorithm once, keep it resident, serve one task at a time."""
