"""The paper's shading ablation, scored against the toy world's true shapes.

The paper (section 3.1) finds that lit and textureless renders are what make
geometry: a NeRF trained on albedo renders alone only has to get each view's
colours right, which a flat or hollow shape can do. The same recipe runs
three ways, everything else equal:

  albedo       albedo-only renders throughout (shading.lit_prob = 0)
  lit          plus lit renders after the warm-up (textureless_prob = 0)
  textureless  plus textureless renders: the full recipe

`shading_ablation` trains (or reuses) every (variant, prompt, seed) run with
`toy_sweep.toy_evaluate`, under ROOT/<variant>/, and `format_ablation_table`
prints IoU, normal angle and albedo error side by side.
"""

import copy
import os
from typing import Dict, Sequence, Union

import ml_collections

from dreamfusion_jax import files
from dreamfusion_jax.evaluation import toy_sweep

PathLike = Union[str, os.PathLike]

VARIANTS = ('albedo', 'lit', 'textureless')
ABLATION_RESULTS = 'ablation_results.json'


def variant_config(config: ml_collections.ConfigDict,
                   variant: str) -> ml_collections.ConfigDict:
  """`config` with the shading of one ablation variant."""
  config = copy.deepcopy(config)
  if variant == 'albedo':
    config.shading.lit_prob = 0.0
  elif variant == 'lit':
    config.shading.textureless_prob = 0.0
  elif variant != 'textureless':
    raise ValueError(f'Unknown ablation variant {variant!r}; use one of '
                     f'{VARIANTS}.')
  return config


def shading_ablation(config: ml_collections.ConfigDict, root: PathLike,
                     prompts: Sequence[str] = toy_sweep.TOY_PROMPTS,
                     seeds: Sequence[int] = (0, 1, 2),
                     threshold: float = 5.0) -> Dict:
  """Runs and scores the three variants; results also in ROOT/<json>.

  Returns:
    {'variants': {variant: toy_evaluate's results}}.
  """
  results = {'variants': {}}
  for variant in VARIANTS:
    results['variants'][variant] = toy_sweep.toy_evaluate(
        variant_config(config, variant), os.path.join(os.fspath(root),
                                                      variant),
        prompts, seeds, threshold)
  files.write_json(os.path.join(os.fspath(root), ABLATION_RESULTS), results)
  return results


def format_ablation_table(results: Dict) -> str:
  """Markdown: one row per prompt, IoU / normal angle / albedo error per
  variant (means over seeds)."""
  variants = list(results['variants'])
  first = results['variants'][variants[0]]
  head = ['prompt', 'seeds'] + [f'{v}: IoU / normal deg / albedo err'
                                for v in variants]
  lines = [f"IoU at density > {first['threshold']:g}, "
           f"{first['num_steps']} steps; means over seeds", '',
           '| ' + ' | '.join(head) + ' |',
           '|' + '---|' * len(head)]
  for prompt in first['prompts']:
    cells = [prompt, str(len(first['prompts'][prompt]['seeds']))]
    for v in variants:
      row = results['variants'][v]['prompts'][prompt]
      cells.append(f"{row['iou_mean']:.3f} / {row['normal_angle_mean']:.1f}"
                   f" / {row['albedo_error_mean']:.3f}")
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
