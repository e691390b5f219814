"""Cluster 'comparison': extremes, sorting and pairwise comparison of small integer lists."""
from tasks.generators.spec import TaskSpec, t


def _numbers(rng, lo=3, hi=7):
  return rng.sample(range(100), rng.randint(lo, hi))


def _fmt(xs):
  return ', '.join(str(x) for x in xs)


def _max(rng):
  xs = _numbers(rng)
  return dict(xs=_fmt(xs), answer=str(max(xs)))


def _min(rng):
  xs = _numbers(rng)
  return dict(xs=_fmt(xs), answer=str(min(xs)))


def _sort_asc(rng):
  xs = _numbers(rng)
  return dict(xs=_fmt(xs), answer=_fmt(sorted(xs)))


def _sort_desc(rng):
  xs = _numbers(rng)
  return dict(xs=_fmt(xs), answer=_fmt(sorted(xs, reverse=True)))


def _compare(rng):
  a = rng.randint(0, 999)
  b = a if rng.random() < 0.2 else rng.randint(0, 999)
  answer = 'greater' if a > b else 'less' if a < b else 'equal'
  return dict(a=a, b=b, options=['greater', 'less', 'equal'], answer=answer)


def _second_largest(rng):
  xs = _numbers(rng)
  return dict(xs=_fmt(xs), answer=str(sorted(xs)[-2]))


_LIST_T = '{xs}'
TASKS = [
    TaskSpec('max_of_list', 'comparison', _max, [
        t('What is the largest number in this list: {xs}?'),
        t('Find the maximum of {xs}.'),
        t('Numbers: {xs}\nLargest:'),
        t('Which of these is the biggest? {xs}'),
        t('Return the highest value among {xs}.'),
    ]),
    TaskSpec('min_of_list', 'comparison', _min, [
        t('What is the smallest number in this list: {xs}?'),
        t('Find the minimum of {xs}.'),
        t('Numbers: {xs}\nSmallest:'),
        t('Which of these is the lowest? {xs}'),
        t('Return the least value among {xs}.'),
    ]),
    TaskSpec('sort_ascending', 'comparison', _sort_asc, [
        t('Sort these numbers from smallest to largest: {xs}'),
        t('Put in increasing order: {xs}'),
        t('Arrange {xs} in ascending order.'),
        t('Numbers: {xs}\nSorted (ascending):'),
        t('Order the following list, lowest first: {xs}'),
    ]),
    TaskSpec('sort_descending', 'comparison', _sort_desc, [
        t('Sort these numbers from largest to smallest: {xs}'),
        t('Put in decreasing order: {xs}'),
        t('Arrange {xs} in descending order.'),
        t('Numbers: {xs}\nSorted (descending):'),
        t('Order the following list, highest first: {xs}'),
    ]),
    TaskSpec('compare_numbers', 'comparison', _compare, [
        t('Is {a} greater than, less than, or equal to {b}?'),
        t('Compare {a} with {b}.\n{options_}'),
        t('How does {a} relate to {b}?'),
        t('First number: {a}\nSecond number: {b}\nThe first number is'),
        t('Tell me whether {a} is greater, less, or equal when compared to {b}.'),
    ]),
    TaskSpec('second_largest', 'comparison', _second_largest, [
        t('What is the second largest number in {xs}?'),
        t('Find the runner-up value in this list: {xs}'),
        t('Numbers: {xs}\nSecond largest:'),
        t('If you remove the maximum from {xs}, what is the new maximum?'),
        t('Which number in {xs} is just below the biggest one?'),
    ]),
]
