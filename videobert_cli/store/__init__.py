"""Storage: the HDF5 schema, shard writer and reader, the output folder and its checks (the only h5py users)."""
