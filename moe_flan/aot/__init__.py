"""Pod plans: the trainer's train step compiled for a TPU slice on a CPU host (libtpu).

  topology      chip table (HBM, peak FLOPs, bandwidths), `kind:AxBxC` names, compile-only devices
  compiled_step the trainer's step built abstractly on a slice's mesh, lowered and compiled
  hlo           collectives of the compiled HLO: kind, bytes, mesh axes, executions, MoE layer
  report        HBM per chip, FLOPs and roofline, collective table, all-to-all vs minimum, goals
  cli           `python -m moe_flan.aot` (flags, text report, --out JSON)
"""
