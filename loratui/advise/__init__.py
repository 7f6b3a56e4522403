"""The precision advisor: `loratui advise CONFIG` and `train.precision = "advise"` (issue 9).

Short trials of each precision this machine can run go through the real
trainer with the real health monitor attached; the monitor's `health` events
and the trainer's `step` events are the evidence, and a decision rule turns
them into one recommendation with its reasons.

Modules, in the order the work flows:
  trials.py    run the trials (one trainer, the same start state for each)
  memory.py    peak memory of one trial
  figures.py   a trial's figures, read from its events
  decide.py    verdicts per trial and the recommendation, with reasons
  report.py    advice.json: its shape, writing it, reusing it
  run.py       `train.precision = "advise"` inside the trainer (no UI imports)
  render.py    the table: rich on a terminal, plain text otherwise
  cli.py       `loratui advise`
"""
