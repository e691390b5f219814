"""The FLAN 2022 task sources, their spellings in published exports, and their mixing settings.

Published exports spell `task_source` in several ways (`Flan2021`, `flan`, `Muffin`, `P3`,
`T0`, `NIv2`, `CoT`, `Dialog`, ...); prepare stores the canonical name below, so shard file
names, the index and the mixtures use one spelling. An unknown spelling is kept (lower-cased,
sanitised) as its own source; the mixtures give it `flan2022_settings.source_weights[name]`
(an error names it if that is unset).

Rates and caps are the published FLAN 2022 ones (google-research/FLAN, flan/v2/run_example.py
`flan2022_submix` and flan/v2/mixtures.py `DEFAULT_MIXTURE_MAX_EXAMPLES`): Flan 2021 (Muffin)
0.4, T0-SF 0.32, NIv2 0.2, CoT 0.05, Dialog 0.03; per-task example caps 30k / 20k / 5k / 100k /
200k. The program-synthesis submixture of the paper was never published (no data, no rate), so
its weight defaults to 0: set `flan2022_settings.source_weights` to train on such rows.
"""
from __future__ import annotations

import re
from typing import Dict

FLAN2021, T0, NIV2, COT, DIALOG, PROGRAM_SYNTHESIS = (
    'flan2021', 't0', 'niv2', 'cot', 'dialog', 'program_synthesis')
CANONICAL = (FLAN2021, T0, NIV2, COT, DIALOG, PROGRAM_SYNTHESIS)

ALIASES: Dict[str, str] = {
    'flan2021': FLAN2021, 'flan_2021': FLAN2021, 'flan': FLAN2021, 'muffin': FLAN2021,
    'flan2021_submix': FLAN2021,
    't0': T0, 't0_sf': T0, 't0sf': T0, 'p3': T0, 't0_submix': T0,
    'niv2': NIV2, 'natinst': NIV2, 'natinstv2': NIV2, 'super_natural_instructions': NIV2,
    'sni': NIV2, 'niv2_submix': NIV2,
    'cot': COT, 'chain_of_thought': COT, 'cot_submix': COT,
    'dialog': DIALOG, 'dialogue': DIALOG, 'dialog_submix': DIALOG,
    'program_synthesis': PROGRAM_SYNTHESIS, 'programsynthesis': PROGRAM_SYNTHESIS,
    'code': PROGRAM_SYNTHESIS,
}

SOURCE_WEIGHTS: Dict[str, float] = {FLAN2021: 0.4, T0: 0.32, NIV2: 0.2, COT: 0.05,
                                    DIALOG: 0.03, PROGRAM_SYNTHESIS: 0.0}
SOURCE_CAPS: Dict[str, int] = {FLAN2021: 30000, T0: 20000, NIV2: 5000, COT: 100000,
                               DIALOG: 200000, PROGRAM_SYNTHESIS: 30000}

_NON_WORD = re.compile(r'[^0-9a-z]+')


def slug(text: str) -> str:
  """Lower-case [0-9a-z_] form of `text` (for file and seqio task names); never empty."""
  return _NON_WORD.sub('_', text.lower()).strip('_') or 'x'


def canonical_source(raw: str) -> str:
  """The canonical source name of a published `task_source` spelling."""
  key = slug(raw)
  return ALIASES.get(key, ALIASES.get(key.replace('_', ''), key))


def template_kind(template_type: str) -> Dict[str, bool]:
  """{'zero_shot', 'few_shot', 'options', 'cot'} flags of a template type such as 'zs_opt',
  'fs_noopt', 'cot_zs_opt' (published names), by its underscore-separated tokens."""
  tokens = set(slug(template_type).split('_'))
  return {'zero_shot': 'zs' in tokens or 'zeroshot' in tokens,
          'few_shot': 'fs' in tokens or 'fewshot' in tokens,
          'options': 'opt' in tokens,
          'cot': 'cot' in tokens}
