"""Running and recording instances: the cascade, batches, shards, result files and tables."""
