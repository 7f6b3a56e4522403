"""Training data: the bundled datasets, JSONL readers for three formats, batching."""
