"""Pipeline: corpus readers, stage registry, fingerprints, HDF5 shard store, Dask scheduling."""
