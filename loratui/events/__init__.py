"""Events: the in-process bus, the JSONL log, console lines, and the tailer that reads them back."""
