"""The dashboard: a Textual app that supervises the trainer process and tails its run directory.

Nothing under loratui.ui imports torch, transformers or peft (the trainer
process does), so the first frame appears before any of them would load.
"""
