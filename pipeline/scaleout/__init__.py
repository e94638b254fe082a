"""Running many jobs at once: the sweep's parent run, merging shards when a multirun ends, and the file locks that
keep concurrent jobs apart."""
