"""Progress: a bar with ETA on a terminal, plain log lines otherwise (CI logs, files)."""
from __future__ import annotations

import sys
import time
from typing import Mapping, Optional, TextIO



def _fmt_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f'{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}'


class Progress:
  """Reports training progress from `start_step` to `total_steps`."""

  def __init__(self, start_step: int, total_steps: int, stream: Optional[TextIO] = None,
               width: int = 30):
    self.stream = stream or sys.stdout
    self.start_step, self.total = start_step, total_steps
    self.width = width
    self.t0 = time.time()
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()

  def eta(self, step: int) -> float:
    done = step - self.start_step
    if done <= 0:
      return float('nan')
    return (time.time() - self.t0) / done * (self.total - step)

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())
    eta = self.eta(step)
    eta_s = _fmt_seconds(eta) if eta == eta else '?'
    return f'step {step}/{self.total} {shown} eta {eta_s}'

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    if self.tty:
      frac = min(step / max(self.total, 1), 1.0)
      filled = int(frac * self.width)
      bar = '#' * filled + '-' * (self.width - filled)
      self.stream.write(f'\r[{bar}] {self.line(step, metrics)}\x1b[K')
      self.stream.flush()
    else:
      print(self.line(step, metrics), file=self.stream, flush=True)

  def close(self) -> None:
    if self.tty:
      self.stream.write('\n')
      self.stream.flush()
