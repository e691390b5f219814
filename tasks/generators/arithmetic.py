"""Cluster 'arithmetic': integer sums, differences, products, remainders, parity."""
from tasks.generators.spec import TaskSpec, t, with_rationale


def _addition(rng):
  a, b = rng.randint(0, 999), rng.randint(0, 999)
  return dict(a=a, b=b, answer=str(a + b))


def _subtraction(rng):
  a = rng.randint(0, 999)
  b = rng.randint(0, a)
  return dict(a=a, b=b, answer=str(a - b))


def _multiplication(rng):
  a, b = rng.randint(0, 99), rng.randint(0, 12)
  return dict(a=a, b=b, answer=str(a * b))


@with_rationale
def _multi_step(rng):
  a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 99)
  s = a + b
  return dict(a=a, b=b, c=c, answer=str(s - c),
              rationale=f'First, {a} + {b} = {s}. Then, {s} - {c} = {s - c}.')


def _remainder(rng):
  a, b = rng.randint(10, 500), rng.randint(2, 12)
  return dict(a=a, b=b, answer=str(a % b))


def _parity(rng):
  n = rng.randint(0, 9999)
  return dict(n=n, options=['even', 'odd'], answer='even' if n % 2 == 0 else 'odd')


TASKS = [
    TaskSpec('addition', 'arithmetic', _addition, [
        t('What is {a} plus {b}?'),
        t('Add {a} and {b}.'),
        t('Compute the sum: {a} + {b} ='),
        t('Q: If you have {a} marbles and find {b} more, how many marbles do you have?\nA:'),
        t('Find the total of {a} and {b}. Answer with a number.'),
        t('{a} + {b}', '{answer}'),
    ], train_size=4000),
    TaskSpec('subtraction', 'arithmetic', _subtraction, [
        t('What is {a} minus {b}?'),
        t('Subtract {b} from {a}.'),
        t('Compute: {a} - {b} ='),
        t('A shop had {a} boxes and sold {b} of them. How many boxes are left?'),
        t('What is the difference between {a} and {b}?'),
    ], train_size=4000),
    TaskSpec('multiplication', 'arithmetic', _multiplication, [
        t('What is {a} times {b}?'),
        t('Multiply {a} by {b}.'),
        t('Compute the product: {a} * {b} ='),
        t('There are {b} bags with {a} beads each. How many beads are there in total?'),
        t('Calculate {a} x {b}. Give only the number.'),
    ]),
    TaskSpec('multi_step', 'arithmetic', _multi_step, [
        t('What is {a} + {b} - {c}?'),
        t('Start with {a}, add {b}, then subtract {c}. What number do you get?'),
        t('Tom had {a} stickers, got {b} more, and gave away {c}. '
          'How many stickers does he have now?'),
        t('Compute ({a} + {b}) - {c}.'),
        t('Evaluate the expression {a} + {b} - {c}.'),
    ]),
    TaskSpec('remainder', 'arithmetic', _remainder, [
        t('What is the remainder when {a} is divided by {b}?'),
        t('Compute {a} mod {b}.'),
        t('{a} sweets are shared equally among {b} children. How many sweets are left over?'),
        t('Find {a} % {b}.'),
        t('Divide {a} by {b}. What is the remainder?'),
    ]),
    TaskSpec('parity', 'arithmetic', _parity, [
        t('Is {n} even or odd?'),
        t('Decide whether the number {n} is even or odd.'),
        t('Number: {n}\nParity:'),
        t('Can {n} be split into two equal whole numbers? Say even if yes, odd if not.'),
        t('Classify {n} by parity.\n{options_}'),
    ]),
]
