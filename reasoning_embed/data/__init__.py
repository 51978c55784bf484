"""Training and evaluation data: the JSONL format, the offline corpus, batching."""
