"""The embedded generated collection: size, templates, determinism, splits, registry behaviour."""
import importlib
import io

import pytest
import seqio

import tasks
from tasks import embedded, generators, registry, templates


def test_collection_size_and_clusters():
  assert len(generators.ALL_TASKS) >= 40
  assert len(generators.CLUSTERS) >= 8
  assert all(len(s.templates) >= 5 for s in generators.ALL_TASKS)
  assert any(s.human_written for s in generators.ALL_TASKS)
  assert set(generators.HELDOUT_CLUSTERS) < set(generators.CLUSTERS)


@pytest.mark.parametrize('spec', generators.ALL_TASKS, ids=lambda s: s.name)
def test_every_template_renders_every_format(spec):
  ex = embedded.generate_examples(spec.name, 0)['validation'][0]
  assert isinstance(ex['answer'], str) and ex['answer'].strip()
  if ex.get('options'):
    assert ex['answer'] in ex['options']
  for t in spec.templates:
    inputs, targets = templates.render(ex, t, 'zs_opt')
    assert inputs.strip() and targets == ex['answer']
    if ex.get('options'):
      assert templates.parse_options(inputs) == list(ex['options'])
    if spec.has_rationale:
      assert templates.render(ex, t, 'cot')[1].endswith(f'So the answer is {ex["answer"]}.')


def test_generation_is_deterministic_and_seeded():
  a = embedded.generate_examples('addition', 0)
  embedded.generate_examples.cache_clear()
  b = embedded.generate_examples('addition', 0)
  assert a == b
  assert embedded.generate_examples('addition', 1)['train'] != a['train']
  assert len(a['train']) == 4000 and len(a['test']) == 100


def test_splits_do_not_overlap_when_the_space_is_large():
  ex = embedded.generate_examples('addition', 0)
  key = lambda e: (e['a'], e['b'])
  test = {key(e) for e in ex['test']}
  assert not test & {key(e) for e in ex['validation']}
  assert not test & {key(e) for e in ex['train']}


def test_arithmetic_answers_are_correct():
  for e in embedded.generate_examples('multi_step', 0)['test']:
    assert int(e['answer']) == e['a'] + e['b'] - e['c']
  for e in embedded.generate_examples('sort_ascending', 0)['test']:
    assert e['answer'] == ', '.join(sorted(e['xs'].split(', '), key=int))


def test_mix_variant_uses_all_formats():
  cols = embedded.rendered_now('multi_step', 'mix', 'train')
  n = len(cols['inputs'])
  cot = sum("Let's think step by step." in x for x in cols['inputs'])
  fs = sum(x.count('\n\n') >= 1 and "step by step" not in x for x in cols['inputs'])
  assert 0.05 * n < cot < 0.2 * n  # format_weights cot = 0.1
  assert fs > 0.2 * n


def test_mixtures_respect_the_heldout_protocol():
  train = {t.name for t in seqio.get_mixture_or_task('flan_embedded').tasks}
  held = {t.name for t in seqio.get_mixture_or_task('flan_embedded_heldout').tasks}
  assert len(train) == len(generators.TRAINING_TASKS) and not train & {n + '_mix' for n in held}
  clusters_of = lambda names: {embedded.spec_of(n).cluster for n in names}
  assert clusters_of(train).isdisjoint(generators.HELDOUT_CLUSTERS)
  assert clusters_of(held) == set(generators.HELDOUT_CLUSTERS)
  down = {t.name for t in seqio.get_mixture_or_task('flan_embedded_downstream').tasks}
  assert down <= held


def test_number_of_tasks_knob():
  for n in (1, 4, 8, 32):
    mix = seqio.get_mixture_or_task(embedded.training_mixture(n))
    assert len(mix.tasks) == n
  eight = seqio.get_mixture_or_task('flan_embedded_n8').tasks
  assert len({embedded.spec_of(t.name).cluster for t in eight}) == 8
  assert embedded.training_mixture(len(embedded.TRAINING_ORDER)) == 'flan_embedded'
  with pytest.raises(ValueError, match='num_tasks=0'):
    embedded.training_mixture(0)


def test_registration_is_idempotent_but_duplicates_raise():
  embedded.register_all()  # again: no error
  importlib.reload(tasks)
  with pytest.raises(ValueError, match='Duplicate task registration.*emb_addition'):
    registry.add_task('emb_addition', fingerprint='something else',
                      source=seqio.FunctionDataSource(lambda split, shuffle_files: None, ['train']),
                      output_features=tasks.vocab.output_features())


def test_unknown_name_lists_closest():
  with pytest.raises(ValueError, match=r"'flan_embeded'.*closest.*'flan_embedded'"):
    registry.get('flan_embeded')
  with pytest.raises(ValueError, match='no close match'):
    registry.get('zzzzzzzzzzzzzzzzzzzzzzz')


def test_inspect_reports_rates_counts_and_lengths():
  from tasks import inspect as tasks_inspect  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  summary = tasks_inspect.describe('flan_embedded_cluster_dates', split='validation', samples=1,
                                   max_examples=20, out=out)
  assert len(summary) == 5
  assert abs(sum(s['rate'] for s in summary.values()) - 1) < 1e-6
  assert summary['emb_days_in_month']['examples'] == 12
  text = out.getvalue()
  assert 'INPUTS :' in text and 'inputs tokens: p50' in text


def test_training_mixture_weighs_clusters_equally_by_default():
  mix = seqio.get_mixture_or_task('flan_embedded')
  per_cluster = {}
  for t in mix.tasks:
    c = embedded.spec_of(t.name).cluster
    per_cluster[c] = per_cluster.get(c, 0.0) + mix.get_rate(t)
  assert len(per_cluster) == 8
  for rate in per_cluster.values():
    assert rate == pytest.approx(1.0)
  # Inside a cluster: capped examples-proportional (addition 4000 -> cap 3000, parity 1000).
  rate = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rate['emb_addition_mix'] / rate['emb_parity_mix'] == pytest.approx(3.0)


@pytest.mark.parametrize('limit', [None, 3])
def test_token_ids_are_the_rendered_text_encoded_also_when_cached(limit):
  """Every build of a task (the first tokenizes, later ones reuse the cached ids) yields each
  example's text encoded plus EOS, cut to the evaluation's example limit."""
  from tasks import eval_prompts, vocab  # pylint: disable=g-import-not-at-top
  voc = vocab.default_vocabulary()
  task = registry.get('emb_nli')
  with eval_prompts.limit_examples(limit):
    for _ in range(2):
      rows = list(task.get_dataset(sequence_length=None, split='validation', shuffle=False,
                                   num_epochs=1).as_numpy_iterator())
      assert len(rows) == (limit or len(embedded.rendered_now('nli', 'zs', 'validation')['inputs']))
      for row in rows:
        for k in ('inputs', 'targets'):
          want = list(voc.encode(row[f'{k}_pretokenized'].decode())) + [voc.eos_id]
          assert row[k].tolist() == want
