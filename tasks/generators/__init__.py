"""The embedded generated task collection: every TaskSpec, grouped in clusters.

Held-out protocol (FLAN, Wei et al. 2022): whole clusters are held out of instruction tuning and
used only for zero-/few-shot evaluation. Here HELDOUT_CLUSTERS = ('logic', 'classification');
DOWNSTREAM_TASKS (drawn from those clusters) are the finetuning targets for comparing direct
finetuning against instruction tuning followed by finetuning.
"""
from tasks.generators import (arithmetic, ciphers, classification, comparison, counting, dates,
                              logic, passage_qa, strings, tracking)
from tasks.generators.spec import Example, TaskSpec

_MODULES = (arithmetic, comparison, strings, counting, logic, tracking, dates, passage_qa,
            classification, ciphers)
ALL_TASKS = tuple(spec for m in _MODULES for spec in m.TASKS)
TASKS_BY_NAME = {spec.name: spec for spec in ALL_TASKS}
CLUSTERS = tuple(dict.fromkeys(spec.cluster for spec in ALL_TASKS))
HELDOUT_CLUSTERS = ('logic', 'classification')
DOWNSTREAM_TASKS = ('nli', 'syllogism', 'authored_sentiment')
TRAINING_TASKS = tuple(s.name for s in ALL_TASKS if s.cluster not in HELDOUT_CLUSTERS)
HELDOUT_TASKS = tuple(s.name for s in ALL_TASKS if s.cluster in HELDOUT_CLUSTERS)

assert len(TASKS_BY_NAME) == len(ALL_TASKS), 'duplicate embedded task name'
assert set(DOWNSTREAM_TASKS) <= set(HELDOUT_TASKS)
