"""The headless trainer. Nothing here imports textual or rich (a test proves it)."""
