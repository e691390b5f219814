"""Cluster 'counting': letters, words, vowels, occurrences and list lengths."""
from tasks.generators.lexicon import WORDS
from tasks.generators.spec import TaskSpec, t


def _count_letter(rng):
  w = rng.choice(WORDS)
  letter = rng.choice(sorted(set(w)) + ['z', 'q'])
  return dict(word=w, letter=letter, answer=str(w.count(letter)))


def _count_words(rng):
  s = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
  return dict(sentence=s, answer=str(len(s.split())))


def _count_vowels(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=str(sum(c in 'aeiou' for c in w)))


def _count_occurrences(rng):
  pool = rng.sample(WORDS, 3)
  xs = [rng.choice(pool) for _ in range(rng.randint(3, 10))]
  target = rng.choice(pool)
  return dict(xs=' '.join(xs), target=target, answer=str(xs.count(target)))


def _list_length(rng):
  xs = [str(rng.randint(0, 99)) for _ in range(rng.randint(1, 15))]
  return dict(xs=', '.join(xs), answer=str(len(xs)))


TASKS = [
    TaskSpec('count_letter', 'counting', _count_letter, [
        t('How many times does the letter "{letter}" appear in "{word}"?'),
        t('Count the {letter}s in {word}.'),
        t('Word: {word}\nLetter: {letter}\nCount:'),
        t('In the word {word}, how often do you see {letter}?'),
        t('Tell me the number of "{letter}" characters in "{word}".'),
    ], train_size=800),
    TaskSpec('count_words', 'counting', _count_words, [
        t('How many words are in this text: "{sentence}"?'),
        t('Count the words: {sentence}'),
        t('Text: {sentence}\nNumber of words:'),
        t('"{sentence}" - how many words is that?'),
        t('Give the word count of the following: {sentence}'),
    ]),
    TaskSpec('count_vowels', 'counting', _count_vowels, [
        t('How many vowels are in "{word}"?'),
        t('Count the vowels in {word}.'),
        t('Word: {word}\nVowels:'),
        t('How many of the letters in {word} are a, e, i, o or u?'),
        t('Tell me the number of vowels in the word "{word}".'),
    ], train_size=300),
    TaskSpec('count_occurrences', 'counting', _count_occurrences, [
        t('How many times does "{target}" appear in: {xs}?'),
        t('Count the occurrences of {target} in the list {xs}.'),
        t('List: {xs}\nWord: {target}\nCount:'),
        t('In "{xs}", how often is {target} mentioned?'),
        t('Tally how many times {target} shows up: {xs}'),
    ]),
    TaskSpec('list_length', 'counting', _list_length, [
        t('How many numbers are in this list: {xs}?'),
        t('Count the items: {xs}'),
        t('List: {xs}\nLength:'),
        t('What is the length of the list [{xs}]?'),
        t('Tell me how many entries the following list has: {xs}'),
    ]),
]
