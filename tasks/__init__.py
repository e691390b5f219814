"""moe_flan data: importing this package registers every seqio Task and Mixture.

  import tasks
  tasks.registry.get('flan_embedded')          # unknown names list the closest ones
  tasks.pipeline.get_batches('flan_embedded', 'train', {'inputs': 128, 'targets': 32}, 8, seed=0)

Registration is cheap (no data is generated or read at import) and idempotent.
"""
from tasks import embedded as _embedded
from tasks import registry, vocab
from tasks import span_corruption as _span_corruption
from tasks import tfds_tasks as _tfds_tasks

_embedded.register_all()
_span_corruption.register()
_tfds_tasks.register_all()
