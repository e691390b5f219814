"""The round-robin timer: every candidate runs once per round, in a rotating order, and the
ratios are per-round ratios to the baseline."""
from benchmarks import timing


def test_compare_rotates_the_order_and_reports_per_round_ratios():
  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
  comparison = timing.compare(fns, baseline='a', repeats=4, warmup=0)
  assert calls == list('abc' 'bca' 'cab' 'abc')
  assert comparison.baseline == 'a' and comparison.ratios['a'].median_s == 1.0
  assert all(t.repeats == 4 for t in comparison.timings.values())
  for name in 'bc':
    ratio = comparison.ratios[name]
    assert ratio.min_s <= ratio.median_s <= ratio.max_s and ratio.repeats == 4


def test_compare_lead_in_runs_each_candidate_right_before_its_timed_call():
  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in 'ab'}
  comparison = timing.compare(fns, baseline='a', repeats=2, warmup=0, lead_in=1)
  assert calls == list('aabb' 'bbaa')
  assert all(t.repeats == 2 for t in comparison.timings.values())
