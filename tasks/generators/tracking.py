"""Cluster 'tracking': follow entities through swaps, moves, transfers and repaints."""
from tasks.generators.lexicon import COLORS, FRUITS, NAMES, OBJECTS, PLACES
from tasks.generators.spec import TaskSpec, t, with_rationale


@with_rationale
def _ball_swaps(rng):
  people = rng.sample(NAMES, 3)
  obj = rng.choice(OBJECTS)
  holder = people[0]
  story, steps = [f'{holder} has the {obj}.'], []
  for _ in range(rng.randint(1, 4)):
    other = rng.choice([p for p in people if p != holder])
    story.append(f'{holder} gives the {obj} to {other}.')
    steps.append(f'{other} has it after {holder} gives it away.')
    holder = other
  return dict(story=' '.join(story), obj=obj, answer=holder, rationale=' '.join(steps))


def _object_location(rng):
  name = rng.choice(NAMES)
  obj = rng.choice(OBJECTS)
  places = [rng.choice(PLACES) for _ in range(rng.randint(1, 4))]
  story = f'{name} puts the {obj} in the {places[0]}.'
  for p in places[1:]:
    story += f' Then {name} moves the {obj} to the {p}.'
  return dict(story=story, obj=obj, answer=f'the {places[-1]}')


@with_rationale
def _fruit_transfer(rng):
  a, b = rng.sample(NAMES, 2)
  fruit = rng.choice(FRUITS)
  x = rng.randint(2, 20)
  g = rng.randint(1, x)
  buy = rng.randint(0, 10)
  story = f'{a} has {x} {fruit}. {a} gives {g} to {b} and then buys {buy} more.'
  rationale = (f'{a} starts with {x}. After giving {g} away, {a} has {x - g}. '
               f'Buying {buy} more gives {x - g + buy}.')
  return dict(story=story, name=a, fruit=fruit, answer=str(x - g + buy), rationale=rationale)


def _queue_order(rng):
  people = rng.sample(NAMES, 4)
  line = list(people)
  story = f'{", ".join(line[:-1])} and {line[-1]} stand in a line, in that order.'
  for _ in range(rng.randint(1, 2)):
    i, j = sorted(rng.sample(range(4), 2))
    story += f' {line[i]} and {line[j]} swap places.'
    line[i], line[j] = line[j], line[i]
  pos = rng.randrange(4)
  ordinal = ['first', 'second', 'third', 'fourth'][pos]
  return dict(story=story, ordinal=ordinal, answer=line[pos])


def _repaint(rng):
  name = rng.choice(NAMES)
  obj = rng.choice(OBJECTS)
  colors = [rng.choice(COLORS) for _ in range(rng.randint(1, 4))]
  story = f'{name} paints the {obj} {colors[0]}.'
  for c in colors[1:]:
    story += f' Later, {name} repaints it {c}.'
  return dict(story=story, obj=obj, answer=colors[-1])


TASKS = [
    TaskSpec('ball_swaps', 'tracking', _ball_swaps, [
        t('{story} Who has the {obj} now?'),
        t('Story: {story}\nQuestion: Who holds the {obj} at the end?'),
        t('{story}\nAt the end, the {obj} is with'),
        t('Read the story and answer. {story} Which person ends up with the {obj}?'),
        t('Track the {obj}. {story} Who has it?'),
    ]),
    TaskSpec('object_location', 'tracking', _object_location, [
        t('{story} Where is the {obj}?'),
        t('Story: {story}\nQuestion: Where is the {obj} now?'),
        t('{story}\nThe {obj} is in'),
        t('Read carefully. {story} In which room is the {obj}?'),
        t('Follow the {obj}: {story} Where did it end up?'),
    ]),
    TaskSpec('fruit_transfer', 'tracking', _fruit_transfer, [
        t('{story} How many {fruit} does {name} have now?'),
        t('Story: {story}\nQuestion: How many {fruit} does {name} have?'),
        t('{story}\n{name} now has how many {fruit}?'),
        t('Solve the word problem. {story} Count {name}\'s {fruit}.'),
        t('{story} What is the number of {fruit} {name} ends with?'),
    ]),
    TaskSpec('queue_order', 'tracking', _queue_order, [
        t('{story} Who is {ordinal} in line?'),
        t('Story: {story}\nQuestion: Who stands {ordinal}?'),
        t('{story}\nThe person in the {ordinal} position is'),
        t('Keep track of the line. {story} Who is now {ordinal}?'),
        t('{story} Name the person who is {ordinal} in the line.'),
    ]),
    TaskSpec('repaint', 'tracking', _repaint, [
        t('{story} What color is the {obj} now?'),
        t('Story: {story}\nQuestion: What is the final color of the {obj}?'),
        t('{story}\nThe {obj} is now'),
        t('Read the story. {story} Which color does the {obj} have at the end?'),
        t('{story} Tell me the current color of the {obj}.'),
    ]),
]
