"""Eval metrics and prompt fitting without a model: CoT answer extraction on hand-written
rationales, rank classification by summed and per-token log-likelihood, few-shot fitting that
drops exemplars and never the question, and the pooled (macro / micro) standard errors."""
import math

import numpy as np
import pytest

from moe_flan.evaluation import report
from tasks import eval_metrics, eval_prompts


@pytest.mark.parametrize('text,answer', [
    ('9 is more than 3. So the answer is (B).', '(B)'),
    ('First 2+2=4, then 4*3=12. so the answer is 12.', '12'),
    ('So the answer is yes. Wait, no: So the answer is no.', 'no'),     # the last phrase wins
    ('So the answer is: Paris', 'Paris'),
    ('The total is 12.', None),                                         # no answer phrase
    ('It follows. So the answer is .', None),                           # nothing after it
    ('', None),
])
def test_cot_answer_extraction(text, answer):
  assert eval_metrics.extract_answer(text) == answer
  assert eval_metrics.cot_answer(text, is_target=False) == answer


def test_cot_metrics_count_unparsable_as_wrong():
  targets = ['(B)', '12', 'no']
  predictions = [eval_metrics.cot_answer(t) for t in
                 ('So the answer is (B).', 'I think it is 12.', 'So the answer is yes.')]
  assert predictions == ['(B)', None, 'yes']
  em = eval_metrics.exact_match(targets, predictions)
  assert em['exact_match'] == pytest.approx(100 / 3) and em['num_examples'] == 3
  assert eval_metrics.unparsable(targets, predictions) == {'unparsable': 1.0}
  # A bare target stays itself; a CoT target gives its answer.
  assert eval_metrics.cot_answer('(B)', is_target=True) == '(B)'
  assert eval_metrics.cot_answer('x. So the answer is 7.', is_target=True) == '7'


def _rows(example, scores, tokens, correct):
  return [{'example': example, 'option': i, 'is_correct': i == correct, 'num_tokens': t}
          for i, t in enumerate(tokens)], list(scores)


def test_rank_classification_summed_and_per_token():
  # Example 0: option 1 wins on the sum (-2 > -3) but option 0 per token (-3/3 = -1 > -2/1).
  t0, s0 = _rows(0, [-3.0, -2.0], [3, 1], correct=0)
  # Example 1: option 2 wins both ways.
  t1, s1 = _rows(1, [-5.0, -4.0, -1.0], [1, 2, 1], correct=2)
  ranked = eval_metrics.rank_choices(t0 + t1, s0 + s1)
  assert [r['choice'] for r in ranked] == [1, 2]
  assert [r['choice_norm'] for r in ranked] == [0, 2]
  assert ranked[0]['normalized'] == [-1.0, -2.0]
  m = eval_metrics.rank_classification(t0 + t1, s0 + s1)
  assert m['accuracy'] == 50.0 and m['accuracy_norm'] == 100.0 and m['num_examples'] == 2
  assert m['accuracy_stderr'] == pytest.approx(100 * np.std([0, 1], ddof=1) / math.sqrt(2))


def test_few_shot_fitting_drops_exemplars_from_the_end_never_the_question():
  shots = ['aaaa', 'bbbb', 'cccc']
  prompt, n, truncated = eval_prompts.fit_prompt('H:', shots, 'question?', '|', 100, len)
  assert (prompt, n, truncated) == ('H:aaaa|bbbb|cccc|question?', 3, False)
  budget = len('H:aaaa|bbbb|question?')
  prompt, n, truncated = eval_prompts.fit_prompt('H:', shots, 'question?', '|', budget, len)
  assert (prompt, n, truncated) == ('H:aaaa|bbbb|question?', 2, False)
  prompt, n, truncated = eval_prompts.fit_prompt('H:', shots, 'question?', '|', 11, len)
  assert (prompt, n, truncated) == ('H:question?', 0, False)
  prompt, n, truncated = eval_prompts.fit_prompt('H:', shots, 'question?', '|', 5, len)
  assert prompt.endswith('question?') and n == 0 and truncated


def test_pooled_macro_and_micro_standard_errors():
  # Two tasks of binary outcomes: the micro pool must equal the mean / stderr of all examples.
  a, b = [1, 0, 1, 1], [0, 0, 1, 0, 1, 1]
  entries = []
  for values in (a, b):
    mean, se = eval_metrics.mean_and_stderr(values)
    entries.append({'metrics': {'accuracy': {'value': mean, 'stderr': se, 'n': len(values)}}})
  pooled = report.pool(entries)
  assert pooled['macro']['accuracy']['value'] == pytest.approx((np.mean(a) + np.mean(b)) / 2)
  assert pooled['micro']['accuracy']['value'] == pytest.approx(np.mean(a + b))
  assert pooled['micro']['accuracy']['n'] == 10
  # The micro stderr pools per-task variances: sqrt(sum n_i^2 se_i^2) / N.
  want = math.sqrt(sum(len(v) ** 2 * np.var(v, ddof=1) / len(v) for v in (a, b))) / 10
  assert pooled['micro']['accuracy']['stderr'] == pytest.approx(want)


# The task files of the published BBH data, `ls bbh/` of suzgunmirac/BIG-Bench-Hard at commit
# 9ee07bd481feebf959a6b59d61ea57bdcf30964d (23 tasks; three in 3 / 5 / 7-object variants).
PUBLISHED_BBH_FILES = (
    'boolean_expressions', 'causal_judgement', 'date_understanding', 'disambiguation_qa',
    'dyck_languages', 'formal_fallacies', 'geometric_shapes', 'hyperbaton',
    'logical_deduction_five_objects', 'logical_deduction_seven_objects',
    'logical_deduction_three_objects', 'movie_recommendation', 'multistep_arithmetic_two',
    'navigate', 'object_counting', 'penguins_in_a_table', 'reasoning_about_colored_objects',
    'ruin_names', 'salient_translation_error_detection', 'snarks', 'sports_understanding',
    'temporal_sequences', 'tracking_shuffled_objects_five_objects',
    'tracking_shuffled_objects_seven_objects', 'tracking_shuffled_objects_three_objects',
    'web_of_lies', 'word_sorting')
# The per-task results table of Suzgun et al. 2022 (arXiv:2210.09261), its 23 rows as printed:
# the rows marked lambda are the algorithmic tasks (averaged in its "Algorithmic Task (avg)"
# row), the others the NLP tasks ("NLP Task (avg)").
PUBLISHED_BBH_GROUPS = {
    'nlp': ('Causal Judgement', 'Date Understanding', 'Disambiguation QA', 'Formal Fallacies',
            'Hyperbaton', 'Movie Recommendation', 'Penguins in a Table',
            'Reasoning about Colored Objects', 'Ruin Names',
            'Salient Translation Error Detection', 'Snarks', 'Sports Understanding'),
    'algorithmic': ('Boolean Expressions', 'Dyck Languages', 'Geometric Shapes',
                    'Logical Deduction', 'Multi-Step Arithmetic', 'Navigate', 'Object Counting',
                    'Temporal Sequences', 'Tracking Shuffled Objects', 'Web of Lies',
                    'Word Sorting'),
}


def _paper_row(task_file: str) -> str:
  """The table row of a task file: object-count variants share a row; the arithmetic file is
  named after its two-level variant."""
  for suffix in ('_three_objects', '_five_objects', '_seven_objects'):
    task_file = task_file.removesuffix(suffix)
  return {'multistep_arithmetic_two': 'multi_step_arithmetic'}.get(task_file, task_file)


def test_bbh_task_groups_match_the_published_table():
  from tasks import bbh  # pylint: disable=g-import-not-at-top
  assert sorted(bbh.TASKS) == sorted(PUBLISHED_BBH_FILES)
  rows = {name.lower().replace(' ', '_').replace('-', '_'): group
          for group, names in PUBLISHED_BBH_GROUPS.items() for name in names}
  assert len(rows) == 23
  assert {_paper_row(t) for t in PUBLISHED_BBH_FILES} == set(rows)   # every row has its files
  for task in PUBLISHED_BBH_FILES:
    assert bbh.category(task) == f'bbh/{rows[_paper_row(task)]}', task
