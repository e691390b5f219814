"""The FLAN 2022 mixtures over a registered FLAN Collection.

The published recipe (google-research/FLAN, flan/v2): each task source is a sub-mixture with
a weight (`sources.SOURCE_WEIGHTS`); inside a source, each template type present (zs_opt,
zs_noopt, fs_opt, fs_noopt, ...) gets an equal share; inside a (source, template type), tasks
are mixed examples-proportionally with the source's per-task cap (`sources.SOURCE_CAPS`). So a
task's rate is

    rate = weight[source] / num_template_types[source] * min(n, cap[source])
           / sum over the tasks of that (source, template type) of min(n_i, cap[source])

with n the task's training examples. Mixtures (each over the tasks that pass its selection,
rates renormalised over what remains):
  flan2022             every template type
  flan2022_zs / _fs    zero-shot / few-shot template types only
  flan2022_cot         the CoT source and chain-of-thought template types
  flan2022_no_heldout  everything except the held-out tasks (`flan2022_settings.heldout`)
  flan2022_heldout     only the held-out tasks (examples-proportional; for evaluation)
  flan2022_{source}    one source
Held-out entries are task-name globs ('anli_r*') or 'cluster:NAME' (`clusters`, by default the
17 FLAN 2021 clusters, `FLAN2021_CLUSTERS`); a task matches with or without a ':version' suffix,
case-insensitively.
Everything is gin-configurable through `flan2022_settings`, and applies when the collection is
registered.
"""
from __future__ import annotations

import collections
import fnmatch
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import gin

from tasks import mixtures as base_mixtures
from tasks import registry
from tasks.flan_collection import sources

# FLAN 2021 task clusters (Wei et al. 2021, arXiv 2109.01652, Figure 3), as the FLAN authors'
# code defines them: google-research/FLAN, flan/task_splits.py `_DEFAULT_TASK_CLUSTERS_ABBREV`
# (cluster names from there; the paper's names are accepted too, see CLUSTER_ALIASES). Each task
# is listed under its FLAN 2021 name and under the name the FLAN 2022 exports give it: the TFDS
# dataset of flan/v2/task_configs_v1.py with '/' written '_' (e.g. 'super_glue/rte:1.0.2' is
# exported as 'super_glue_rte:1.0.2'; matching ignores the ':version').
FLAN2021_CLUSTERS: Dict[str, Sequence[str]] = {
    'summarization': ('aeslc', 'cnn_dailymail', 'gigaword', 'multi_news', 'newsroom', 'samsum',
                      'xsum', 'huggingface:xsum', 'ag_news_subset',
                      'opinion_abstracts_rotten_tomatoes', 'opinion_abstracts_idebate',
                      'wiki_lingua_english_en', 'gem_wiki_lingua_english_en'),
    'structure_to_text': ('web_nlg_en', 'common_gen', 'e2e_nlg', 'dart', 'gem_web_nlg_en',
                          'gem_common_gen', 'gem_e2e_nlg', 'gem_dart'),
    'reading_comprehension': ('squad_v1', 'squad_v2', 'drop', 'multirc', 'openbookqa', 'bool_q',
                              'squad_v1.1', 'squad_v2.0', 'super_glue_multirc'),
    'open_domain_qa': ('trivia_qa', 'natural_questions', 'arc_challenge', 'arc_easy',
                       'trivia_qa_rc', 'natural_questions_open', 'ai2_arc_arc-challenge',
                       'ai2_arc_arc-easy'),
    'paraphrase': ('glue_mrpc', 'glue_qqp', 'paws_wiki', 'stsb', 'glue_stsb'),
    'sentiment': ('imdb_reviews', 'sentiment140', 'yelp_polarity_reviews', 'sst2',
                  'imdb_reviews_plain_text', 'glue_sst2'),
    # The three text-formatting tasks are all built from para_crawl/enda, so their exports share
    # one name.
    'text_formatting': ('true_case', 'fix_punct', 'word_segment', 'para_crawl_enda'),
    'common_sense': ('copa', 'hellaswag', 'story_cloze', 'piqa', 'super_glue_copa',
                     'story_cloze_2016'),
    'translation': ('para_crawl_enes', 'wmt14_enfr', 'wmt16_translate_deen', 'wmt16_translate_tren',
                    'wmt16_translate_csen', 'wmt16_translate_fien', 'wmt16_translate_roen',
                    'wmt16_translate_ruen', 'wmt14_translate_fr-en', 'wmt16_translate_de-en',
                    'wmt16_translate_tr-en', 'wmt16_translate_cs-en', 'wmt16_translate_fi-en',
                    'wmt16_translate_ro-en', 'wmt16_translate_ru-en'),
    'coreference': ('definite_pronoun_resolution', 'winogrande', 'wsc', 'super_glue_wsc.fixed'),
    'entailment': ('anli_r1', 'anli_r2', 'anli_r3', 'cb', 'rte', 'mnli_matched',
                   'mnli_mismatched', 'qnli', 'wnli', 'snli', 'super_glue_cb', 'super_glue_rte',
                   'glue_mnli', 'glue_qnli', 'glue_wnli'),
    'math': ('math_dataset', 'math_dataset_algebra__linear_1d'),
    'conversational_qa': ('quac', 'coqa'),
    'word_disambiguation': ('wic', 'super_glue_wic'),
    'linguistic_acceptability': ('cola', 'glue_cola'),
    'question_classification': ('trec',),
    'read_comp_and_common_sense': ('record', 'cosmos_qa', 'super_glue_record'),
}
# The FLAN 2021 paper's names for the clusters whose code name differs.
CLUSTER_ALIASES: Dict[str, str] = {
    'nli': 'entailment', 'natural_language_inference': 'entailment',
    'commonsense': 'common_sense', 'closed_book_qa': 'open_domain_qa',
    'struct_to_text': 'structure_to_text',
}
# FLAN 2022 evaluates on benchmarks outside the collection (MMLU, BBH: Longpre et al. 2023,
# arXiv 2301.13688, Figure 1 and Appendix A.3; Flan-MoE, arXiv 2305.14705, the same suites), so
# its own training mixture `flan2022` excludes nothing. `flan2022_no_heldout` is the FLAN 2021
# protocol on top of it (hold out whole clusters, evaluate on them), by default with the natural
# language inference cluster held out, one of the FLAN 2021 paper's evaluation clusters.
DEFAULT_HELDOUT = ('cluster:nli',)


@gin.configurable
def flan2022_settings(source_weights: Optional[Mapping[str, float]] = None,
                      source_caps: Optional[Mapping[str, int]] = None,
                      heldout: Sequence[str] = DEFAULT_HELDOUT,
                      clusters: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Any]:
  """The mixture settings; given weights/caps/clusters update the published defaults."""
  weights = dict(sources.SOURCE_WEIGHTS, **dict(source_weights or {}))
  caps = dict(sources.SOURCE_CAPS, **dict(source_caps or {}))
  bad = {k: v for k, v in weights.items() if v < 0}
  if bad:
    raise ValueError(f'flan2022_settings.source_weights has negative entries {bad}')
  clusters = dict(FLAN2021_CLUSTERS, **dict(clusters or {}))
  heldout = tuple(f'cluster:{CLUSTER_ALIASES.get(h[8:], h[8:])}' if h.startswith('cluster:')
                  and h[8:] not in clusters else h for h in heldout)
  unknown = [h for h in heldout if h.startswith('cluster:') and h[8:] not in clusters]
  if unknown:
    raise ValueError(f'flan2022_settings.heldout: unknown clusters {unknown}; known: '
                     f'{sorted(clusters)}')
  return {'weights': weights, 'caps': caps, 'heldout': tuple(heldout), 'clusters': clusters}


def heldout_patterns(settings: Mapping[str, Any]) -> List[str]:
  patterns = []
  for entry in settings['heldout']:
    patterns += (list(settings['clusters'][entry[8:]]) if entry.startswith('cluster:')
                 else [entry])
  return [p.lower() for p in patterns]


def is_heldout(task_name: str, patterns: Sequence[str]) -> bool:
  names = {task_name.lower(), task_name.lower().split(':', 1)[0]}
  return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _train_examples(group: Mapping[str, Any]) -> int:
  return int(group['examples'].get('train', 0))


def rates(groups: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
          ) -> Dict[str, float]:
  """{task: FLAN 2022 rate} over `groups` (registration groups with units), normalised to sum
  to 1; tasks without training examples or of a zero-weight source are left out."""
  cells: Dict[tuple, List[str]] = collections.defaultdict(list)
  for name, group in groups.items():
    unit = group['units'][0]
    source = unit['task_source']
    if source not in settings['weights']:
      raise ValueError(f'task source {source!r} ({name}) has no mixing weight; set '
                       f'flan2022_settings.source_weights = {{{source!r}: ...}}')
    if _train_examples(group) and settings['weights'][source] > 0:
      ttype = unit['template_type'] if len({u['template_type'] for u in group['units']}) == 1 \
          else '*'
      cells[(source, ttype)].append(name)
  types_per_source = collections.Counter(source for source, _ in cells)
  out = {}
  for (source, _), names in cells.items():
    cap = settings['caps'].get(source, base_mixtures.FLAN_CAP)
    capped = {n: min(_train_examples(groups[n]), cap) for n in names}
    total = sum(capped.values())
    share = settings['weights'][source] / types_per_source[source]
    out.update({n: share * c / total for n, c in capped.items()})
  norm = sum(out.values())
  return {n: r / norm for n, r in sorted(out.items())} if norm else {}


def selections(settings: Mapping[str, Any]) -> Dict[str, Callable[[Mapping[str, Any]], bool]]:
  """{mixture name: predicate on a unit} (sources get one mixture each, added by the caller)."""
  patterns = heldout_patterns(settings)
  kind = lambda u: sources.template_kind(u['template_type'])  # noqa: E731
  return {
      'flan2022': lambda u: True,
      'flan2022_zs': lambda u: kind(u)['zero_shot'],
      'flan2022_fs': lambda u: kind(u)['few_shot'],
      'flan2022_cot': lambda u: u['task_source'] == sources.COT or kind(u)['cot'],
      'flan2022_no_heldout': lambda u: not is_heldout(u['task_name'], patterns),
  }


def register_mixtures(groups: Mapping[str, Mapping[str, Any]], fingerprint: str,
                      prefix: str = '') -> List[str]:
  """Registers the mixtures that have at least one task; returns their names."""
  settings = flan2022_settings()
  chosen = dict(selections(settings))
  for source in sorted({g['units'][0]['task_source'] for g in groups.values()}):
    chosen[f'flan2022_{sources.slug(source)}'] = lambda u, s=source: u['task_source'] == s
  fp = f'{fingerprint}:{sorted(settings["weights"].items())}:{sorted(settings["caps"].items())}'
  names = []
  for mixture, keep in chosen.items():
    members = {n: g for n, g in groups.items() if all(keep(u) for u in g['units'])}
    mixture_rates = rates(members, settings)
    if mixture_rates:
      registry.add_mixture(prefix + mixture, sorted(mixture_rates.items()),
                           fingerprint=f'{fp}:{sorted(mixture_rates.items())}',
                           mixture_cls=base_mixtures.Mixture)
      names.append(prefix + mixture)
  patterns = heldout_patterns(settings)
  heldout = sorted(n for n, g in groups.items()
                   if all(is_heldout(u['task_name'], patterns) for u in g['units']))
  if heldout:
    registry.add_mixture(f'{prefix}flan2022_heldout',
                         [(n, base_mixtures.examples_proportional_rate) for n in heldout],
                         fingerprint=f'{fp}:heldout:{heldout}', mixture_cls=base_mixtures.Mixture)
    names.append(f'{prefix}flan2022_heldout')
  return names
