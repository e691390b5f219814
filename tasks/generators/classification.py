"""Cluster 'classification': sentiment, NLI, paraphrase and topic over generated sentences,
plus authored sentiment sentences."""
from tasks.generators.authored import load_tsv, split_rows
from tasks.generators.lexicon import CITIES, COLORS, NAMES, OBJECTS, PETS
from tasks.generators.spec import TaskSpec, t

_POS = ('wonderful', 'delicious', 'friendly', 'excellent', 'charming', 'comfortable', 'great')
_NEG = ('awful', 'bland', 'rude', 'terrible', 'boring', 'uncomfortable', 'disappointing')
_THINGS = ('meal', 'service', 'hotel', 'movie', 'concert', 'book', 'trip', 'class')
_SENT = ['positive', 'negative']
_NLI = ['yes', 'it is not possible to tell', 'no']


def _sentiment(rng):
  pos = rng.random() < 0.5
  adj = rng.choice(_POS if pos else _NEG)
  thing = rng.choice(_THINGS)
  opener = rng.choice(['Honestly,', 'Overall,', 'To be fair,', 'In short,', ''])
  text = f'{opener} the {thing} was {adj}.'.strip().capitalize()
  return dict(text=text, options=_SENT, answer='positive' if pos else 'negative')


def _nli(rng):
  name, pet = rng.choice(NAMES), rng.choice(PETS)
  color = rng.choice(COLORS)
  premise = f'{name} has a {color} {pet} and lives in {rng.choice(CITIES)}.'
  kind = rng.randrange(3)
  if kind == 0:
    hypothesis, answer = f'{name} has a {pet}.', 'yes'
  elif kind == 1:
    hypothesis, answer = f'{name}\'s {pet} is {rng.choice(COLORS)} and very old.', \
        'it is not possible to tell'
  else:
    other = rng.choice([c for c in COLORS if c != color])
    hypothesis, answer = f'{name}\'s {pet} is entirely {other}.', 'no'
  return dict(premise=premise, hypothesis=hypothesis, options=_NLI, answer=answer)


def _paraphrase(rng):
  name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
  other = rng.choice([n for n in NAMES if n != name])
  s1 = f'{name} gave the {obj} to {other}.'
  same = rng.random() < 0.5
  s2 = (f'The {obj} was given to {other} by {name}.' if same
        else f'{other} gave the {obj} to {name}.')
  return dict(s1=s1, s2=s2, options=['yes', 'no'], answer='yes' if same else 'no')


_TOPICS = {
    'sports': ('The striker scored twice in the second half.', 'The marathon starts at dawn.',
               'Our team lost the final on penalties.', 'She swam fifty laps before breakfast.'),
    'food': ('Add the onions and stir for two minutes.', 'This bakery sells rye bread.',
             'The curry needs more salt.', 'We ordered noodles and dumplings.'),
    'weather': ('Heavy rain is expected this evening.', 'It will be sunny and warm tomorrow.',
                'Strong winds knocked down a tree.', 'Snow is falling in the mountains.'),
    'technology': ('The new laptop has a faster chip.', 'Update the app to fix the bug.',
                   'The robot can sort parcels by size.', 'My phone battery lasts two days.'),
}


def _topic(rng):
  topic = rng.choice(sorted(_TOPICS))
  a, b = rng.sample(_TOPICS[topic], 2)
  return dict(text=f'{a} {b}', options=sorted(_TOPICS), answer=topic)


def _authored_sentiment(split):
  return [dict(text=s, options=_SENT, answer=a)
          for s, a in split_rows(load_tsv('authored_sentiment.tsv'), split)]


_SENTIMENT_T = [
    t('{text}\nIs this review positive or negative?'),
    t('What is the sentiment of the following sentence?\n{text}'),
    t('Review: {text}\nSentiment:'),
    t('"{text}" Did the writer feel good or bad about it?\n{options_}'),
    t('Classify the sentiment of this text: {text}'),
]
TASKS = [
    TaskSpec('sentiment', 'classification', _sentiment, _SENTIMENT_T, train_size=1000),
    TaskSpec('nli', 'classification', _nli, [
        t('Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?'),
        t('{premise}\n\nBased on the paragraph above can we conclude that "{hypothesis}"?'),
        t('Read the following and determine if the hypothesis can be inferred from the premise:'
          '\n\nPremise: {premise}\n\nHypothesis: {hypothesis}'),
        t('{premise} Does it follow that {hypothesis}\n{options_}'),
        t('Sentence 1: {premise}\nSentence 2: {hypothesis}\nIs sentence 2 true, given sentence 1?'),
    ]),
    TaskSpec('paraphrase', 'classification', _paraphrase, [
        t('Do these two sentences mean the same thing?\n{s1}\n{s2}'),
        t('Sentence A: {s1}\nSentence B: {s2}\nAre A and B paraphrases?'),
        t('"{s1}" and "{s2}" - same meaning?'),
        t('Is the second sentence a paraphrase of the first?\n{s1}\n{s2}\n{options_}'),
        t('Compare: {s1} / {s2}\nDo they say the same thing?'),
    ]),
    TaskSpec('topic', 'classification', _topic, [
        t('What is this text about?\n{text}'),
        t('Text: {text}\nTopic:'),
        t('Classify the topic of the following: {text}'),
        t('{text}\n\nWhich topic fits best?\n{options_}'),
        t('Pick the subject of this passage: {text}'),
    ], train_size=500),
    TaskSpec('authored_sentiment', 'classification', None, _SENTIMENT_T,
             fixed_examples=_authored_sentiment),
]
