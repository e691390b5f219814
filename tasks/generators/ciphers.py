"""Cluster 'ciphers': translation-like rewrites (Caesar, pig latin, number words, codes)."""
from tasks.generators.lexicon import WORDS
from tasks.generators.spec import TaskSpec, t

_ONES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten',
         'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen',
         'eighteen', 'nineteen')
_TENS = ('', '', 'twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety')


def number_words(n: int) -> str:
  """English words for 0 <= n < 1000 ('three hundred twelve')."""
  if n < 20:
    return _ONES[n]
  if n < 100:
    return _TENS[n // 10] + ('' if n % 10 == 0 else '-' + _ONES[n % 10])
  rest = n % 100
  return _ONES[n // 100] + ' hundred' + ('' if rest == 0 else ' ' + number_words(rest))


def _shift(word, k):
  return ''.join(chr((ord(c) - 97 + k) % 26 + 97) for c in word)


def _caesar(rng):
  w = rng.choice(WORDS)
  k = rng.randint(1, 3)
  return dict(word=w, k=k, answer=_shift(w, k))


def _pig_latin(rng):
  w = rng.choice(WORDS)
  i = next((j for j, c in enumerate(w) if c in 'aeiou'), len(w))
  return dict(word=w, answer=(w + 'way') if i == 0 else w[i:] + w[:i] + 'ay')


def _to_words(rng):
  n = rng.randrange(1000)
  return dict(n=n, answer=number_words(n))


def _from_words(rng):
  n = rng.randrange(1000)
  return dict(words=number_words(n), answer=str(n))


def _letter_codes(rng):
  w = rng.choice(WORDS)
  return dict(word=w, answer=' '.join(str(ord(c) - 96) for c in w))


def _reverse_order(rng):
  ws = rng.sample(WORDS, rng.randint(2, 6))
  return dict(text=' '.join(ws), answer=' '.join(reversed(ws)))


TASKS = [
    TaskSpec('caesar', 'ciphers', _caesar, [
        t('Shift every letter of "{word}" forward by {k} in the alphabet.'),
        t('Encode {word} with a Caesar cipher of shift {k}.'),
        t('Plain: {word}\nShift: {k}\nCipher:'),
        t('Apply ROT-{k} to the word {word}.'),
        t('Replace each letter in {word} by the letter {k} places after it.'),
    ]),
    TaskSpec('pig_latin', 'ciphers', _pig_latin, [
        t('Translate "{word}" into Pig Latin.'),
        t('What is {word} in Pig Latin?'),
        t('English: {word}\nPig Latin:'),
        t('Move the leading consonants of {word} to the end and add "ay".'),
        t('Say {word} the Pig Latin way.'),
    ], train_size=300),
    TaskSpec('number_to_words', 'ciphers', _to_words, [
        t('Write the number {n} in words.'),
        t('Spell out {n}.'),
        t('Number: {n}\nIn words:'),
        t('How do you say {n} in English words?'),
        t('Convert the digits {n} to English words.'),
    ], train_size=700),
    TaskSpec('words_to_number', 'ciphers', _from_words, [
        t('Write "{words}" as digits.'),
        t('What number is {words}?'),
        t('Words: {words}\nNumber:'),
        t('Convert "{words}" to a numeral.'),
        t('Turn the English phrase {words} into digits.'),
    ], train_size=700),
    TaskSpec('letter_codes', 'ciphers', _letter_codes, [
        t('Replace each letter of "{word}" by its position in the alphabet.'),
        t('Encode {word} with a=1, b=2, ..., z=26.'),
        t('Word: {word}\nCodes:'),
        t('What are the alphabet positions of the letters in {word}?'),
        t('Turn {word} into numbers using A1Z26.'),
    ], train_size=300),
    TaskSpec('reverse_word_order', 'ciphers', _reverse_order, [
        t('Reverse the order of the words: {text}'),
        t('Write "{text}" with the words backwards.'),
        t('Words: {text}\nReversed order:'),
        t('Read this sentence from the last word to the first: {text}'),
        t('Flip the word order of {text}.'),
    ]),
]
