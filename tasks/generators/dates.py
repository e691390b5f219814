"""Cluster 'dates': weekdays, months, clock arithmetic, month lengths, date order."""
import datetime

from tasks.generators.lexicon import MONTHS, WEEKDAYS
from tasks.generators.spec import TaskSpec, t, with_rationale

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@with_rationale
def _weekday_after(rng):
  d = rng.randrange(7)
  n = rng.randint(1, 30)
  r = n % 7
  return dict(day=WEEKDAYS[d], n=n, answer=WEEKDAYS[(d + n) % 7],
              rationale=f'{n} days is {n // 7} weeks and {r} days. {r} days after {WEEKDAYS[d]} is '
                        f'{WEEKDAYS[(d + n) % 7]}.')


def _month_after(rng):
  m = rng.randrange(12)
  n = rng.randint(1, 24)
  return dict(month=MONTHS[m], n=n, answer=MONTHS[(m + n) % 12])


def _add_minutes(rng):
  h, m = rng.randrange(24), rng.randrange(60)
  n = rng.randint(1, 180)
  total = (h * 60 + m + n) % (24 * 60)
  return dict(time=f'{h:02d}:{m:02d}', n=n, answer=f'{total // 60:02d}:{total % 60:02d}')


def _days_in_month(rng):
  m = rng.randrange(12)
  return dict(month=MONTHS[m], answer=str(_DAYS_IN_MONTH[m]))


def _earlier_date(rng):
  base = datetime.date(1900, 1, 1)
  a = base + datetime.timedelta(days=rng.randrange(60000))
  b = base + datetime.timedelta(days=rng.randrange(60000))
  fa = f'{MONTHS[a.month - 1]} {a.day}, {a.year}'
  fb = f'{MONTHS[b.month - 1]} {b.day}, {b.year}'
  if a == b:
    b = b + datetime.timedelta(days=1)
    fb = f'{MONTHS[b.month - 1]} {b.day}, {b.year}'
  return dict(a=fa, b=fb, options=[fa, fb], answer=fa if a < b else fb)


TASKS = [
    TaskSpec('weekday_after', 'dates', _weekday_after, [
        t('Today is {day}. What day of the week will it be in {n} days?'),
        t('What weekday comes {n} days after {day}?'),
        t('Start: {day}\nDays later: {n}\nWeekday:'),
        t('If it is {day} now, which day is it {n} days from now?'),
        t('Count forward {n} days from {day}. Which day do you reach?'),
    ], train_size=600),
    TaskSpec('month_after', 'dates', _month_after, [
        t('It is {month}. Which month will it be in {n} months?'),
        t('What month comes {n} months after {month}?'),
        t('Start month: {month}\nMonths later: {n}\nMonth:'),
        t('Count forward {n} months from {month}. Which month is it?'),
        t('If a project starts in {month} and lasts {n} months, in which month does it end?'),
    ], train_size=500),
    TaskSpec('add_minutes', 'dates', _add_minutes, [
        t('What time is it {n} minutes after {time}?'),
        t('Add {n} minutes to {time} (24-hour clock).'),
        t('Time: {time}\nPlus minutes: {n}\nNew time:'),
        t('A train leaves at {time} and the trip takes {n} minutes. When does it arrive?'),
        t('The clock shows {time}. What will it show {n} minutes later?'),
    ]),
    TaskSpec('days_in_month', 'dates', _days_in_month, [
        t('How many days are in {month} in a non-leap year?'),
        t('In a common year, how long is {month} in days?'),
        t('Month: {month}\nDays:'),
        t('Tell me the number of days in {month} (not a leap year).'),
        t('{month} has how many days in an ordinary year?'),
    ], train_size=100, eval_size=12),
    TaskSpec('earlier_date', 'dates', _earlier_date, [
        t('Which date is earlier: {a} or {b}?'),
        t('Pick the earlier of the two dates.\n{options_}'),
        t('Date one: {a}\nDate two: {b}\nEarlier date:'),
        t('Which happened first, {a} or {b}?'),
        t('Between {a} and {b}, which comes first on the calendar?'),
    ]),
]
