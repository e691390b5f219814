"""`python -m tasks.inspect` on a small prepared FLAN Collection: the summary's counts and token
percentiles equal an independent count of the rows written, samples are real rows, per-task
rates are the mixture's, and a bad name is one clear error."""
import collections
import re

import numpy as np
import pytest
import seqio

from tasks import inspect as inspect_lib
from tasks import vocab
from tasks.flan_collection import mixtures, prepare, sources
import flan_collection_fixtures as fx


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('inspect')
  rows = fx.rows(duplicates=True) + [dict(fx.rows()[0], inputs='')]    # one rejected row
  src = fx.write_jsonl(root / 'export.jsonl', rows)
  out = str(root / 'data')
  # No validation slice, so every unique valid row is a training example.
  prepare.prepare(src, out, log=lambda *_: None, num_shards=2, min_rows_per_shard=50,
                  validation_fraction=0.0)
  yield out
  fx.unregister(out)   # the CLI registers without a name prefix


def _expected_by_source():
  """{canonical source: unique rows} from the fixture, independently of prepare."""
  seen, out = set(), collections.defaultdict(list)
  for r in fx.rows(duplicates=True):
    key = tuple(r[c] for c in fx.COLUMNS)
    if key not in seen:
      seen.add(key)
      out[sources.canonical_source(r['task_source'])].append(r)
  return out


def test_data_dir_summary_counts_lengths_and_samples(data_dir, capsys):
  inspect_lib.main(['--data_dir', data_dir, '--samples', '1', '--max_examples', '10000'])
  text = capsys.readouterr().out
  expected = _expected_by_source()
  voc = vocab.default_vocabulary()
  assert "rejected rows: {'empty_inputs': 1}" in text
  for source, rows in expected.items():
    block = text.split(f'-- {source}:')[1].split('\n-- ')[0]
    assert f'examples {{\'train\': {len(rows)}}}' in block, (source, block[:200])
    types = collections.Counter(r['template_type'] for r in rows)
    assert f'template types: {dict(sorted(types.items()))}' in block
    for key in ('inputs', 'targets'):
      lens = [len(voc.encode(r[key])) + 1 for r in rows]          # + EOS
      p = np.percentile(lens, [50, 90, 99])
      want = {'p50': int(p[0]), 'p90': int(p[1]), 'p99': int(p[2]), 'max': max(lens)}
      assert f'{key} tokens (with EOS, {len(rows)} rows): {want}' in block
    # The one sample shown is a real row of this source, inputs and targets together.
    shown = re.search(r"INPUTS : '(.*)'\n   TARGETS: '(.*)'", block)
    assert (shown.group(1), shown.group(2)) in {(r['inputs'], r['targets']) for r in rows}


def test_rates_print_the_mixture_rates(data_dir, capsys):
  inspect_lib.main(['--data_dir', data_dir, '--mixture', 'flan2022', '--rates'])
  lines = capsys.readouterr().out.strip().splitlines()
  printed = {name: float(rate) for rate, name in (l.split() for l in lines[1:])}
  mixture = seqio.get_mixture_or_task('flan2022')
  total = sum(mixture.get_rate(t) for t in mixture.tasks)
  assert printed == pytest.approx({t.name: mixture.get_rate(t) / total for t in mixture.tasks},
                                  abs=1e-6)
  assert lines[0] == f'== flan2022: {len(mixture.tasks)} tasks'
  # The held-out default (the NLI cluster) holds the fixture's anli_r1, so it is not trained on.
  training = {t.name for t in seqio.get_mixture_or_task('flan2022_no_heldout').tasks}
  assert {n for n in printed if '.anli_r1' in n} and not {n for n in training if '.anli_r1' in n}
  assert sum(printed.values()) == pytest.approx(1.0, abs=1e-5)


def test_unknown_name_is_one_clear_error(data_dir, capsys):
  with pytest.raises(SystemExit) as e:
    inspect_lib.main(['--data_dir', data_dir, '--mixture', 'flan2022_zz', '--rates'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "Unknown task or mixture 'flan2022_zz'" in err and "'flan2022_zs'" in err
  with pytest.raises(SystemExit):
    inspect_lib.main(['--data_dir', data_dir + '_missing'])
  assert 'no index.json' in capsys.readouterr().err


def test_nli_cluster_matches_the_names_of_the_published_exports():
  # FLAN 2022 exports name FLAN 2021 tasks after their TFDS datasets ('super_glue/rte:1.0.2'
  # -> 'super_glue_rte:1.0.2'); the paper's cluster name 'nli' is the code's 'entailment'.
  patterns = mixtures.heldout_patterns(mixtures.flan2022_settings(heldout=['cluster:nli']))
  for name in ('anli_r1:0.1.0', 'anli_r3:0.1.0', 'super_glue_cb:1.0.2', 'super_glue_rte:1.0.2',
               'glue_mnli:2.0.0', 'glue_qnli:2.0.0', 'glue_wnli:2.0.0', 'snli:1.1.0'):
    assert mixtures.is_heldout(name, patterns), name
  for name in ('super_glue_copa:1.0.2', 'glue_mrpc:2.0.0', 'stream_esnli', 'cot_gsm8k',
               'task001_quoref_question_generation', 'ai2_arc_ARC-Easy:1.0.0'):
    assert not mixtures.is_heldout(name, patterns), name
  arc = mixtures.heldout_patterns(mixtures.flan2022_settings(heldout=['cluster:closed_book_qa']))
  assert mixtures.is_heldout('ai2_arc_ARC-Challenge:1.0.0', arc)
  # No task sits in two clusters, so holding out one never removes another's task.
  owners = collections.Counter(t for ts in mixtures.FLAN2021_CLUSTERS.values() for t in ts)
  assert not [t for t, n in owners.items() if n > 1]
  assert len(mixtures.FLAN2021_CLUSTERS) == 17
