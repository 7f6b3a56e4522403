"""loratui watching trainers it did not start: `loratui.integrations.transformers.LoraTuiCallback`."""
