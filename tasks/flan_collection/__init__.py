"""The FLAN Collection (FLAN 2022) from its published export files, as sharded seqio tasks.

  python -m tasks.flan_collection prepare --src /data/flan_exports --out /data/flan2022
  tasks.flan_collection.register('/data/flan2022')     # tasks + the flan2022* mixtures

Modules: `reading` (Parquet / JSONL(.gz) streams), `validation` (row checks, rejection
counts), `spill` (the restartable first pass's store), `writing` (TFRecord shards),
`index` (DATA_DIR/index.json), `prepare` (the two passes), `registration` (seqio tasks),
`shards` (the training-time reader of stored token ids),
`mixtures` (FLAN 2022 rates, held-out selection), `sources` (source names, published weights).
"""
from tasks.flan_collection.mixtures import flan2022_settings
from tasks.flan_collection.registration import mixture_or_task_name, register

__all__ = ['flan2022_settings', 'mixture_or_task_name', 'register']
