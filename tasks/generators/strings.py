"""Cluster 'strings': character-level manipulation of single words."""
from tasks.generators.lexicon import WORDS
from tasks.generators.spec import TaskSpec, t

_VOWELS = set('aeiou')


def _reverse(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=w[::-1])


def _upper(rng):
  w = ' '.join(rng.sample(WORDS, rng.randint(1, 3)))
  return dict(word=w, answer=w.upper())


def _first_letter(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=w[0])


def _last_letter(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=w[-1])


def _concat(rng):
  a, b = rng.sample(WORDS, 2)
  return dict(a=a, b=b, answer=a + b)


def _remove_vowels(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=''.join(c for c in w if c not in _VOWELS))


TASKS = [
    TaskSpec('reverse_word', 'strings', _reverse, [
        t('Reverse the word "{word}".'),
        t('Spell "{word}" backwards.'),
        t('Word: {word}\nReversed:'),
        t('Write the letters of {word} in reverse order.'),
        t('What do you get if you read "{word}" from right to left?'),
    ], train_size=600),
    TaskSpec('uppercase', 'strings', _upper, [
        t('Convert to upper case: {word}'),
        t('Write "{word}" in capital letters.'),
        t('Text: {word}\nUppercase:'),
        t('Shout this: {word}'),
        t('Change every letter of "{word}" to a capital.'),
    ]),
    TaskSpec('first_letter', 'strings', _first_letter, [
        t('What is the first letter of "{word}"?'),
        t('Which letter does {word} start with?'),
        t('Word: {word}\nFirst letter:'),
        t('Give the initial letter of the word {word}.'),
        t('"{word}" begins with which letter?'),
    ], train_size=300),
    TaskSpec('last_letter', 'strings', _last_letter, [
        t('What is the last letter of "{word}"?'),
        t('Which letter does {word} end with?'),
        t('Word: {word}\nLast letter:'),
        t('Give the final letter of the word {word}.'),
        t('"{word}" finishes with which letter?'),
    ], train_size=300),
    TaskSpec('concatenate', 'strings', _concat, [
        t('Join "{a}" and "{b}" into one word.'),
        t('Concatenate {a} and {b}.'),
        t('First: {a}\nSecond: {b}\nJoined:'),
        t('Glue the words {a} and {b} together with no space.'),
        t('Write {a} immediately followed by {b}.'),
    ]),
    TaskSpec('remove_vowels', 'strings', _remove_vowels, [
        t('Remove the vowels from "{word}".'),
        t('Delete every a, e, i, o and u in {word}.'),
        t('Word: {word}\nWithout vowels:'),
        t('Write {word} keeping only its consonants.'),
        t('Strip the vowels out of the word {word}.'),
    ], train_size=600),
]
