"""Cluster 'passage_qa': questions over short generated biographies, plus authored trivia."""
from tasks.generators.authored import load_tsv, split_rows
from tasks.generators.lexicon import CITIES, JOBS, NAMES, PETS
from tasks.generators.spec import TaskSpec, t


def _people(rng):
  names = rng.sample(NAMES, rng.randint(2, 3))
  people = [dict(name=n, age=rng.randint(18, 90), city=rng.choice(CITIES), job=rng.choice(JOBS),
                 pet=rng.choice(PETS)) for n in names]
  passage = ' '.join(f'{p["name"]} is {p["age"]} years old and lives in {p["city"]}. '
                     f'{p["name"]} works as a {p["job"]} and has a {p["pet"]}.' for p in people)
  return passage, people


def _make(field, fmt):
  def generate(rng):
    passage, people = _people(rng)
    who = rng.choice(people)
    return dict(passage=passage, name=who['name'], answer=fmt.format(who[field]))
  generate.__name__ = f'_qa_{field}'
  return generate


def _yes_no(rng):
  passage, people = _people(rng)
  who = rng.choice(people)
  city = who['city'] if rng.random() < 0.5 else rng.choice(CITIES)
  return dict(passage=passage, name=who['name'], city=city, options=['yes', 'no'],
              answer='yes' if city == who['city'] else 'no')


def _trivia(split):
  return [dict(question=q, answer=a) for q, a in split_rows(load_tsv('authored_qa.tsv'), split)]


def _passage_templates(question):
  return [
      t('{passage}\n\n' + question),
      t('Read the text and answer the question.\n\nText: {passage}\nQuestion: ' + question),
      t(question + ' Use the passage below.\n\n{passage}'),
      t('Passage: {passage}\nQ: ' + question + '\nA:'),
      t('{passage}\n\nAnswer based on the passage above: ' + question),
  ]


TASKS = [
    TaskSpec('qa_job', 'passage_qa', _make('job', '{}'),
             _passage_templates('What is the job of {name}?')),
    TaskSpec('qa_city', 'passage_qa', _make('city', '{}'),
             _passage_templates('In which city does {name} live?')),
    TaskSpec('qa_age', 'passage_qa', _make('age', '{}'),
             _passage_templates('How old is {name}?')),
    TaskSpec('qa_pet', 'passage_qa', _make('pet', 'a {}'),
             _passage_templates('What pet does {name} have?')),
    TaskSpec('qa_yes_no', 'passage_qa', _yes_no,
             _passage_templates('Does {name} live in {city}?')),
    TaskSpec('authored_trivia', 'passage_qa', None, [
        t('{question}'),
        t('Q: {question}\nA:'),
        t('Answer the following question.\n{question}'),
        t('Question: {question}\nAnswer:'),
        t('Quiz time! {question}'),
    ], fixed_examples=_trivia),
]
