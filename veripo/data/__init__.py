"""Data: the records that flow through a run, their JSONL files, dataset loaders, media decoding and the
synthetic video reasoning tasks."""
