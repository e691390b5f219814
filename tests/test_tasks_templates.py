"""FLAN template rendering: every format on fixed examples, exact strings."""
import pytest

from tasks import templates
from tasks.templates import Template

EX = {'a': 2, 'b': 3, 'answer': 'yes', 'options': ['yes', 'no'], 'rationale': '2 < 3.'}
T = Template('Is {a} less than {b}?')


def test_zero_shot_with_options_appends_flan_block():
  assert templates.render(EX, T, 'zs_opt') == (
      'Is 2 less than 3?\n\nOPTIONS:\n- yes\n- no', 'yes')


def test_zero_shot_options_placeholder_is_filled_in_place():
  t = Template('Q: {a} < {b}?\n{options_}\nA:')
  assert templates.render(EX, t, 'zs_opt') == ('Q: 2 < 3?\nOPTIONS:\n- yes\n- no\nA:', 'yes')
  # Without options the placeholder disappears.
  assert templates.render(EX, t, 'zs_noopt') == ('Q: 2 < 3?\n\nA:', 'yes')


def test_zero_shot_without_options():
  assert templates.render(EX, T, 'zs_noopt') == ('Is 2 less than 3?', 'yes')


def test_few_shot_exemplars_then_query():
  shots = [{'a': 5, 'b': 1, 'answer': 'no'}, {'a': 0, 'b': 9, 'answer': 'yes'}]
  got = templates.render(EX, T, 'fs_noopt', shots)
  assert got == ('Is 5 less than 1?\nno\n\nIs 0 less than 9?\nyes\n\nIs 2 less than 3?', 'yes')


def test_few_shot_with_options_shows_them_in_every_shot():
  shots = [dict(EX, a=5, b=1, answer='no')]
  got = templates.render(EX, T, 'fs_opt', shots)
  assert got[0] == ('Is 5 less than 1?\n\nOPTIONS:\n- yes\n- no\nno\n\n'
                    'Is 2 less than 3?\n\nOPTIONS:\n- yes\n- no')


def test_few_shot_drops_exemplars_from_the_end_to_fit():
  shots = [{'a': 5, 'b': 1, 'answer': 'no'}, {'a': 0, 'b': 9, 'answer': 'yes'}]
  one_shot = 'Is 5 less than 1?\nno\n\nIs 2 less than 3?'
  assert templates.render(EX, T, 'fs_noopt', shots, max_length=len(one_shot))[0] == one_shot
  assert templates.render(EX, T, 'fs_noopt', shots, max_length=5)[0] == 'Is 2 less than 3?'
  # A custom length function (e.g. tokens) is honoured.
  words = lambda s: len(s.split())
  assert templates.render(EX, T, 'fs_noopt', shots, max_length=11, length_fn=words)[0] == one_shot


def test_chain_of_thought():
  assert templates.render(EX, T, 'cot') == (
      "Is 2 less than 3?\n\nLet's think step by step.", '2 < 3. So the answer is yes.')
  with pytest.raises(ValueError, match='rationale'):
    templates.render(dict(EX, rationale=''), T, 'cot', task='t')


def test_parse_options_inverts_format_options():
  inputs, _ = templates.render(EX, T, 'zs_opt')
  assert templates.parse_options(inputs) == ['yes', 'no']
  assert templates.parse_options('no options here') == []


def test_bad_template_and_format_errors():
  with pytest.raises(ValueError, match="field 'c'"):
    templates.render(EX, Template('{c}'), 'zs_noopt', task='x')
  with pytest.raises(ValueError, match='Unknown template format'):
    templates.render(EX, T, 'zero')
