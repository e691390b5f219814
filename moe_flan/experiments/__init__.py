"""The paper's experiment as one resumable command (`python -m moe_flan.experiments.flan_moe`).

  preset.py    the gin-bound experiment (models, seeds, steps, ablations), resolved and stored
  plan.py      the runs of an experiment, their MODEL_DIRs, run files and bindings
  runner.py    one run in-process through the trainer and the evaluation engine; results.json
  report.py    report.json, report.md and plots over the runs' results
  flan_moe.py  the command line
"""
