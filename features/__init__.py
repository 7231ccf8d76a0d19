"""Feature extractors: pure compute from arrays to arrays (no file I/O, no Dask)."""
