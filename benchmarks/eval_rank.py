"""Case 8: MMLU-layout rank classification, our evaluator against transformers, side by side.

One tiny T5 v1.1 (random init, nothing downloaded) as a transformers model and, imported with
`moe_flan.convert`, as ours. An MMLU-layout directory is written with generated questions
(5-shot prompts from dev, 4 options). Both score every (prompt, option) pair of the test split:
  - moe_flan: `Engine.evaluate` on `mmlu_5shot` (seqio.Evaluator; each prompt encoded once and
    its 4 options scored against that encoding; fixed-shape jitted batches; metrics and
    per-example records included);
  - hf_torch: `T5ForConditionalGeneration` in batches of (prompt, option) rows, each row
    encoding its prompt (the usual per-option scoring of evaluation harnesses), torch.no_grad,
    2 threads; prompts and options are tokenized beforehand (ours tokenizes when the Engine is
    built, also untimed).
Reported: questions per second; the ratio ours / HF time (below 1 = we are faster).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from benchmarks import context as ctx_lib
from benchmarks import timing

CASE = 'eval_rank'
TORCH_THREADS = 2
ROWS_PER_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Shape:
  d_model: int
  d_ff: int
  heads: int
  d_kv: int
  layers: int
  subjects: int
  questions: int          # per subject, test split
  input_length: int


FULL = Shape(d_model=256, d_ff=1024, heads=4, d_kv=64, layers=4, subjects=4, questions=32,
             input_length=512)
QUICK = Shape(d_model=32, d_ff=64, heads=2, d_kv=16, layers=2, subjects=2, questions=8,
              input_length=512)
SUBJECTS = ('anatomy', 'philosophy', 'sociology', 'college_physics')


def write_mmlu(root: str, s: Shape) -> None:
  import csv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (('dev', 5), ('test', s.questions)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for subject in SUBJECTS[:s.subjects]:
      rows = []
      for i in range(n):
        a, b = rng.integers(10, 99, 2)
        opts = [str(a + b + d) for d in rng.permutation(4)]
        rows.append([f'In {subject.replace("_", " ")}, what is {a} plus {b}?', *opts,
                     'ABCD'[opts.index(str(a + b))] if str(a + b) in opts else 'A'])
      with open(os.path.join(root, split, f'{subject}_{split}.csv'), 'w', newline='') as f:
        csv.writer(f).writerows(rows)


def hf_model(s: Shape, vocab: int):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=vocab, d_model=s.d_model, d_kv=s.d_kv, d_ff=s.d_ff,
                              num_heads=s.heads, num_layers=s.layers, dropout_rate=0.0,
                              feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                              decoder_start_token_id=0)
  return transformers.T5ForConditionalGeneration(cfg).eval()


def hf_scorer(model, rows: list[tuple[list[int], list[int]]]):
  """A callable scoring every (prompt ids, option ids) row with transformers, batched."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(TORCH_THREADS)
  batches = []
  for start in range(0, len(rows), ROWS_PER_BATCH):
    chunk = rows[start:start + ROWS_PER_BATCH]
    li = max(len(p) for p, _ in chunk)
    lt = max(len(o) for _, o in chunk)
    enc = torch.zeros((len(chunk), li), dtype=torch.long)
    labels = torch.full((len(chunk), lt), -100, dtype=torch.long)
    for i, (p, o) in enumerate(chunk):
      enc[i, :len(p)] = torch.tensor(p)
      labels[i, :len(o)] = torch.tensor(o)
    batches.append((enc, labels))

  def score():
    out = []
    with torch.no_grad():
      for enc, labels in batches:
        logits = model(input_ids=enc, attention_mask=enc > 0, labels=labels).logits
        lp = torch.log_softmax(logits.float(), -1)
        mask = labels >= 0
        picked = torch.gather(lp, -1, labels.clamp(min=0)[..., None])[..., 0]
        out.append((picked * mask).sum(-1))
    return torch.cat(out)
  return score


def run(ctx: ctx_lib.Context) -> list[dict]:
  # pylint: disable=g-import-not-at-top
  import gin
  import jax
  from moe_flan.convert import hf_checkpoint
  from moe_flan.evaluation import engine as engine_lib
  from moe_flan.model import EncoderDecoder
  from moe_flan.partitioning import partitioner as part_lib
  from tasks import benchmarks as _  # noqa: F401  (defines the gin configurable bound below)
  from tasks import vocab as vocab_lib
  s = QUICK if ctx.quick else FULL
  voc = vocab_lib.default_vocabulary()
  with tempfile.TemporaryDirectory() as root:
    write_mmlu(root, s)
    gin.bind_parameter('tasks.benchmarks.register_benchmarks.mmlu_dir', root)
    try:
      engine = engine_lib.Engine(engine_lib.EvalSettings(
          mixture_or_task_name='mmlu_5shot', split='test',
          task_feature_lengths={'inputs': s.input_length, 'targets': 4},
          batch_size=ROWS_PER_BATCH))
    finally:
      gin.clear_config()
  hf = hf_model(s, voc.vocab_size)
  config, params = hf_checkpoint.import_hf(hf)
  params = jax.device_put(params)
  net = EncoderDecoder(config)
  partitioner = part_lib.create_partitioner()
  first = engine.evaluate(net, params, partitioner)
  records = [r for task in sorted(first.records) for r in first.records[task]]
  rows = [(list(voc.encode(r['input'])) + [1], list(voc.encode(o)) + [1])
          for r in records for o in r['options']]
  hf_score = hf_scorer(hf, rows)
  # Same numbers from both before timing (float32; our batches pad differently).
  theirs = hf_score().numpy().reshape(len(records), -1)
  ours = np.array([r['log_likelihood'] for r in records])
  max_diff = float(np.max(np.abs(theirs - ours)))
  comparison = timing.compare({'moe_flan': lambda: engine.evaluate(net, params, partitioner),
                               'hf_torch': hf_score}, baseline='hf_torch', repeats=ctx.repeats,
                              warmup=1)
  n = len(records)
  metrics = {v: {'questions_per_s': n / comparison.timings[v].median_s,
                 'max_abs_loglik_diff': max_diff} for v in comparison.timings}
  params_row = dict(d_model=s.d_model, layers=s.layers, questions=n, options=4, shots=5,
                    input_length=s.input_length, rows_per_batch=ROWS_PER_BATCH,
                    torch_threads=TORCH_THREADS)
  ctx.log(f'MMLU 5-shot rank classification: ours/HF {comparison.ratios["moe_flan"].median_s:.2f}'
          f' ({metrics["moe_flan"]["questions_per_s"]:.1f} vs '
          f'{metrics["hf_torch"]["questions_per_s"]:.1f} questions/s); max |dlogp| {max_diff:.1e}')
  return ctx_lib.comparison_records(CASE, 'mmlu 5-shot', comparison, params_row, metrics)
