"""Cluster 'logic': boolean expressions, syllogisms, orderings, parity and conditionals."""
from tasks.generators.lexicon import ANIMALS, KINDS, NAMES
from tasks.generators.spec import TaskSpec, t, with_rationale

_YES_NO = ['yes', 'no']


def _bool_expr(rng):
  vals = [rng.choice([True, False]) for _ in range(rng.randint(2, 4))]
  ops = [rng.choice(['and', 'or']) for _ in range(len(vals) - 1)]
  expr = str(vals[0])
  for op, v in zip(ops, vals[1:]):
    expr += f' {op} {v}'
  value = eval(expr)  # pylint: disable=eval-used  # only True/False/and/or, built above
  return dict(expr=expr, options=['True', 'False'], answer=str(value))


@with_rationale
def _syllogism(rng):
  a, b = rng.sample(ANIMALS, 2)
  k = rng.choice(KINDS)
  name = rng.choice(NAMES)
  valid = rng.random() < 0.5
  if valid:
    premise = f'All {a} are {k}. {name} is one of the {a}.'
    rationale = f'{name} is one of the {a}, and all {a} are {k}, so {name} is one of the {k}.'
  else:
    premise = f'All {a} are {k}. {name} is one of the {k}.'
    rationale = (f'Being one of the {k} does not make {name} one of the {a}; '
                 f'other creatures can be {k} too.')
  question = f'Is {name} one of the {a}?' if not valid else f'Is {name} one of the {k}?'
  answer = 'yes' if valid else 'it is not possible to tell'
  return dict(premise=premise, question=question, rationale=rationale,
              options=['yes', 'no', 'it is not possible to tell'], answer=answer)


@with_rationale
def _transitive(rng):
  x, y, z = rng.sample(NAMES, 3)
  order = [x, y, z]  # x taller than y taller than z
  p, q = rng.sample(order, 2)
  answer = 'yes' if order.index(p) < order.index(q) else 'no'
  rationale = (f'{x} is taller than {y} and {y} is taller than {z}, '
               f'so the order from tallest is {x}, {y}, {z}.')
  return dict(facts=f'{x} is taller than {y}. {y} is taller than {z}.', p=p, q=q,
              options=_YES_NO, answer=answer, rationale=rationale)


def _xor_parity(rng):
  vals = [rng.choice(['True', 'False']) for _ in range(rng.randint(2, 7))]
  odd = vals.count('True') % 2 == 1
  return dict(xs=', '.join(vals), options=_YES_NO, answer='yes' if odd else 'no')


def _conditional(rng):
  cases = [('it rains', 'the street gets wet'), ('the bell rings', 'the class ends'),
           ('you press the switch', 'the light turns on'), ('the sun sets', 'the owls wake up'),
           ('the kettle boils', 'it whistles'), ('Sam is hungry', 'Sam eats bread')]
  cond, result = rng.choice(cases)
  kind = rng.randrange(4)
  fact, question, answer = [
      (f'{cond}', f'Does it follow that {result}?', 'yes'),
      (f'it is not true that {result}', f'Does it follow that {cond}?', 'no'),
      (f'{result}', f'Does it follow that {cond}?', 'it is not possible to tell'),
      (f'it is not true that {cond}', f'Does it follow that {result}?',
       'it is not possible to tell'),
  ][kind]
  return dict(rule=f'If {cond}, then {result}.', fact=f'We know that {fact}.', question=question,
              options=['yes', 'no', 'it is not possible to tell'], answer=answer)


TASKS = [
    TaskSpec('boolean_expression', 'logic', _bool_expr, [
        t('Evaluate the boolean expression: {expr}'),
        t('What is the value of "{expr}"?'),
        t('Expression: {expr}\nValue:'),
        t('Is the statement "{expr}" True or False?\n{options_}'),
        t('Using Python rules for and/or, compute {expr}.'),
    ]),
    TaskSpec('syllogism', 'logic', _syllogism, [
        t('{premise} {question}'),
        t('Premises: {premise}\nQuestion: {question}'),
        t('Read the statements and answer.\n{premise}\n{question}'),
        t('Given that {premise} {question}\n{options_}'),
        t('Assume the following is true: {premise} Based only on this, {question}'),
    ]),
    TaskSpec('transitive_order', 'logic', _transitive, [
        t('{facts} Is {p} taller than {q}?'),
        t('Facts: {facts}\nQuestion: Is {p} taller than {q}?'),
        t('{facts}\nBased on this, is it true that {p} is taller than {q}?'),
        t('Given: {facts} Answer yes or no: {p} is taller than {q}.'),
        t('Consider these facts. {facts} Does {p} stand taller than {q}?'),
    ]),
    TaskSpec('xor_parity', 'logic', _xor_parity, [
        t('Is the number of True values odd in: {xs}?'),
        t('Values: {xs}\nOdd number of True?'),
        t('Count the Trues in {xs}. Is that count odd?'),
        t('Does the list {xs} contain an odd number of True entries?'),
        t('Parity check: is the count of True in [{xs}] odd?'),
    ]),
    TaskSpec('conditional', 'logic', _conditional, [
        t('{rule} {fact} {question}'),
        t('Rule: {rule}\nFact: {fact}\nQuestion: {question}'),
        t('Suppose: {rule} Also, {fact} {question}'),
        t('{rule}\n{fact}\n{question}\n{options_}'),
        t('Reason carefully. {rule} {fact} {question}'),
    ]),
]
