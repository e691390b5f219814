"""Registration of a prepared FLAN Collection (DATA_DIR/index.json) as seqio tasks and mixtures.

    import tasks.flan_collection
    tasks.flan_collection.register('/data/flan2022')   # reads only index.json

or, in a gin run, gin/runs/flan_collection.gin with `--gin.FLAN_COLLECTION_DIR="'/data/flan2022'"`.

One seqio Task per unit of the index (task source, task, template type), named
`flan_collection.{source}.{task}.{template_type}`, or with `group_by='task'` one per task over
all its template types (`flan_collection.{source}.{task}`). Each reads its own shards with
`seqio.TFExampleDataSource` (stored ids: `shards.IdsSource`, the same examples at about half
the CPU cost); with `shard_info` a host reads only every n-th shard (or, for a task with fewer
shards than hosts, every n-th example), so packing, caching and resumable positions work as
for any seqio task. Shards prepared with a vocabulary (`--vocabulary`) are
read as stored token ids (after checking that vocabulary is the tasks'); others are tokenized
with the task vocabulary (`tasks.vocab`) as they are read. Either way examples get EOS and the
metadata features stay on disk.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import gin
import seqio
import tensorflow as tf

from tasks import registry, vocab
from tasks.flan_collection import index as index_lib
from tasks.flan_collection import mixtures, shards, tokens, writing

PREFIX = 'flan_collection'
GROUP_BY = ('template', 'task')


def _text_only(dataset: tf.data.Dataset) -> tf.data.Dataset:
  text = lambda ex: {'inputs': ex['inputs'], 'targets': ex['targets']}
  return dataset.map(tf.autograph.experimental.do_not_convert(text),
                     num_parallel_calls=tf.data.AUTOTUNE)


def groups(index: Dict[str, Any], group_by: str, prefix: str = '') -> Dict[str, Dict[str, Any]]:
  """{seqio task name: {'units': [...], 'files': {split: [paths]}, 'examples': {split: n}}}."""
  if group_by not in GROUP_BY:
    raise ValueError(f'register.group_by={group_by!r}: choose one of {GROUP_BY}')
  out: Dict[str, Dict[str, Any]] = {}
  for unit in index['units']:
    name = unit['name'] if group_by == 'template' else unit['name'].rsplit('.', 1)[0]
    group = out.setdefault(f'{prefix}{PREFIX}.{name}', {'units': [], 'files': collections.defaultdict(
        list), 'examples': collections.Counter()})
    group['units'].append(unit)
    for split, info in unit['splits'].items():
      group['files'][split] += [s['file'] for s in info['shards']]
      group['examples'][split] += info['examples']
  return out


def _add_task(name: str, group: Dict[str, Any], data_dir: str, fingerprint: str,
              shuffle_buffer_size: int, use_tokens: bool) -> None:
  files = {split: sorted(os.path.join(data_dir, f) for f in fs)
           for split, fs in sorted(group['files'].items())}
  # Stored ids: parse only the int lists, batched, already int32 (no text, no SentencePiece)
  # -- the fast path (shards.IdsSource); the text is parsed per example and tokenized.
  if use_tokens:
    source, first = shards.IdsSource(files, dict(group['examples'])), []
  else:
    source = seqio.TFExampleDataSource(
        split_to_filepattern=files, feature_description=writing.feature_description(),
        num_input_examples=dict(group['examples']))
    first = [_text_only, seqio.preprocessors.tokenize]
  registry.add_task(name, fingerprint=f'{fingerprint}:{use_tokens}:{name}', source=source,
                    output_features=vocab.output_features(),
                    preprocessors=first + [seqio.CacheDatasetPlaceholder(),
                                           seqio.preprocessors.append_eos_after_trim],
                    shuffle_buffer_size=shuffle_buffer_size)


def _use_tokens(index: Dict[str, Any], use_tokens: Optional[bool], data_dir: str) -> bool:
  recorded = index.get('vocabulary')
  if use_tokens is None:
    use_tokens = recorded is not None
  if use_tokens and recorded is None:
    raise ValueError(f'{data_dir}/index.json: the shards hold no token ids (prepared without '
                     '--vocabulary); register with use_tokens=False or None')
  if use_tokens:
    tokens.check(recorded, vocab.default_vocabulary(), data_dir)
  return use_tokens


@gin.configurable
def register(data_dir: str = gin.REQUIRED, group_by: str = 'template',
             name_prefix: str = '', shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE,
             use_tokens: Optional[bool] = None) -> Dict[str, List[str]]:
  """Registers (idempotently) the tasks and mixtures of a prepared DATA_DIR.

  `name_prefix` goes in front of every task and mixture name (e.g. 'v2_' gives
  'v2_flan2022'), so two collections can be registered side by side. `shuffle_buffer_size` is
  per task (seqio's default, 1,000 tokenized examples): a mixture of T tasks holds up to
  T x shuffle_buffer_size examples per host, which bounds it for the 1,800+ FLAN 2022 tasks.
  `use_tokens`: read the token ids stored by `prepare --vocabulary` (None: when the index has
  them; they must have been made with the tasks' vocabulary, else ValueError naming both), or
  (False) tokenize the stored text while reading. Both give the same examples.

  Returns {'tasks': task names, 'mixtures': mixture names}. ValueError if the index is
  missing, unfinished, or does not match the shard files.
  """
  data_dir = os.path.abspath(data_dir)
  index = index_lib.load(data_dir)
  with open(os.path.join(data_dir, index_lib.INDEX), 'rb') as f:
    fingerprint = f'flan_collection:{data_dir}:{hashlib.sha1(f.read()).hexdigest()[:12]}'
  use_tokens = _use_tokens(index, use_tokens, data_dir)
  task_groups = groups(index, group_by, name_prefix)
  for name, group in task_groups.items():
    _add_task(name, group, data_dir, fingerprint, shuffle_buffer_size, use_tokens)
  names = mixtures.register_mixtures(task_groups, fingerprint, name_prefix)
  return {'tasks': sorted(task_groups), 'mixtures': names}


@gin.configurable
def mixture_or_task_name(name: str = gin.REQUIRED, data_dir: str = gin.REQUIRED) -> str:
  """`name` after registering `data_dir`: lets a gin run file name a FLAN Collection mixture
  (MIXTURE_OR_TASK_NAME) that exists only once FLAN_COLLECTION_DIR is registered."""
  register(data_dir)
  return name


def describe_index(data_dir: str) -> str:
  """A short JSON summary of a DATA_DIR's index (sources, bad rows, skipped files)."""
  index = index_lib.load(data_dir)
  return json.dumps({k: index[k] for k in ('sources', 'bad_rows', 'skipped_files',
                                           'empty_tasks')}, indent=1)
