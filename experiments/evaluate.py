r"""Evaluates trained objects: the toy world's scores or CLIP R-Precision.

Toy world (trains the runs that are missing, reuses complete ones):

  python experiments/evaluate.py --mode=toy --root=/tmp/toy_eval \
      [--prompts="a blue sphere,a red cube"] [--seeds=0,1,2] \
      [--config=configs/toy.py] [--threshold=5.0] [--export]

CLIP R-Precision of trained runs (one workdir per caption and seed under
--root):

  python experiments/evaluate.py --mode=clip --root=/tmp/runs \
      [--captions=captions.txt] [--num_views=8] [--resolution=128]

With --train, first trains every caption x seed that is not complete under
--root as one batch run (the paper's 153 objects in one program; the
objects split over the devices), with --config (e.g. configs/
dreamfusion_sd.py), then scores them:

  python experiments/evaluate.py --mode=clip --train --root=/tmp/coco \
      --config=configs/dreamfusion_sd.py [--seeds=0] [--batch_objects=16]

The paper's shading ablation (albedo only / + lit / + textureless, the same
recipe otherwise), trained and scored like the toy table:

  python experiments/evaluate.py --mode=ablation --root=/tmp/ablation \
      [--prompts=...] [--seeds=0,1,2]

The Janus table (the snowman, per guidance fix and prior bias: the exact
prior and configs/toy_biased.py's levels):

  python experiments/evaluate.py --mode=janus --root=/tmp/janus \
      [--seeds=0,1,2,3,4] [--methods=...] [--priors=exact,moderate,strong]

How far each true object is from a fixed point of SDS, per shading mode
(albedo / lit / textureless renders of the true shape; no training, under two
minutes for the five objects):

  python experiments/evaluate.py --mode=truth --root=/tmp/truth \
      [--prompts=...] [--config.toy.textureless_prob=0.25]

With --azimuth_offset=180 the prior is told every view is 180 degrees
further round: to it, the true object turned (the snowman with its nose on
the back), so the pull there against the pull at the truth says how much
the prior cares which way the object faces.

All print a table and write JSON under --root (toy_results.json,
ablation_results.json, janus_results.json, truth_results.json,
clip_results.json) or to --out.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from absl import flags
from ml_collections import config_flags

from dreamfusion_jax import launch

_MODE = flags.DEFINE_enum('mode', 'toy',
                          ['toy', 'ablation', 'janus', 'truth', 'clip'],
                          'What to score.')
_ROOT = flags.DEFINE_string('root', None, 'Folder of the runs.')
_OUT = flags.DEFINE_string('out', None, 'Results JSON (default under root).')
# --mode=toy
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'toy.py'),
    'Toy config for the runs (prompt and seed are set per run).',
    lock_config=True)
_PROMPTS = flags.DEFINE_list(
    'prompts', None, 'Toy prompts (default: all five).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per prompt.')
_THRESHOLD = flags.DEFINE_float('threshold', 5.0, 'Surface density level.')
_EXPORT = flags.DEFINE_bool('export', False, 'Export runs that finish.')
# --mode=janus (also --config, --seeds, --threshold)
_METHODS = flags.DEFINE_list('methods', None,
                             'Janus methods (default: all five: no_views, '
                             'paper, negative, interpolation, perp_neg).')
_PRIORS = flags.DEFINE_list(
    'priors', ['exact', 'moderate', 'strong'],
    'Prior settings: exact and/or levels of configs/toy_biased.py.')
# --mode=clip
_CAPTIONS = flags.DEFINE_string(
    'captions', None, 'Caption file (default: the object-centric COCO set).')
_CLIP_MODELS = flags.DEFINE_list('clip_models', None,
                                 'CLIP models (default: the paper\'s three).')
_NUM_VIEWS = flags.DEFINE_integer('num_views', 8, 'Renders per object.')
_TRAIN = flags.DEFINE_bool(
    'train', False, 'Train the captions x --seeds under --root first, as one '
    'batch run with --config.')
_BATCH_OBJECTS = flags.DEFINE_integer(
    'batch_objects', 0, 'With --train: objects per batch run (0: all in one; '
    'fewer when they do not fit in memory).')
_RESOLUTION = flags.DEFINE_integer(
    'resolution', None, 'Render size (default: each run\'s '
    'export.resolution).')
# --mode=truth
_AZIMUTH_OFFSET = flags.DEFINE_float(
    'azimuth_offset', 0.0, 'Degrees added to the azimuth the prior is told '
    '(the true object turned, e.g. 180: the snowman\'s nose on its back).')
flags.mark_flags_as_required(['root'])


def _seeds():
  from dreamfusion_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    return [int(s) for s in _SEEDS.value]
  except ValueError:
    raise errors.UserError(
        f'--seeds={",".join(_SEEDS.value)} must be integers, e.g. 0,1,2.'
    ) from None


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import errors
  from dreamfusion_jax import files
  from dreamfusion_jax import runs
  from dreamfusion_jax.evaluation import ablation
  from dreamfusion_jax.evaluation import clip_r_precision
  from dreamfusion_jax.evaluation import toy_sweep
  # pylint: enable=g-import-not-at-top
  if _MODE.value == 'janus':
    # pylint: disable=g-import-not-at-top
    from configs import toy_biased
    from dreamfusion_jax.evaluation import janus
    # pylint: enable=g-import-not-at-top
    levels = {'exact': janus.EXACT, **toy_biased.LEVELS}
    unknown = [p for p in _PRIORS.value if p not in levels]
    if unknown:
      raise errors.UserError(f'--priors={",".join(unknown)} is unknown; use '
                             f'{", ".join(levels)}.')
    results = janus.janus_evaluate(
        _CONFIG.value, _ROOT.value, {p: levels[p] for p in _PRIORS.value},
        _METHODS.value or list(janus.METHODS),
        _seeds(), _THRESHOLD.value)
    print(janus.format_janus_table(results))
    if _OUT.value:
      files.write_json(_OUT.value, results)
  elif _MODE.value == 'truth':
    # pylint: disable-next=g-import-not-at-top
    from dreamfusion_jax.evaluation import sds_at_truth
    results = sds_at_truth.evaluate(_CONFIG.value,
                                    _PROMPTS.value or toy_sweep.TOY_PROMPTS,
                                    azimuth_offset=_AZIMUTH_OFFSET.value)
    print(sds_at_truth.format_table(results))
    files.write_json(
        _OUT.value or os.path.join(_ROOT.value, 'truth_results.json'),
        results)
  elif _MODE.value in ('toy', 'ablation'):
    seeds = _seeds()
    prompts = _PROMPTS.value or toy_sweep.TOY_PROMPTS
    if _MODE.value == 'ablation':
      results = ablation.shading_ablation(_CONFIG.value, _ROOT.value, prompts,
                                          seeds, _THRESHOLD.value)
      print(ablation.format_ablation_table(results))
    else:
      results = toy_sweep.toy_evaluate(_CONFIG.value, _ROOT.value, prompts,
                                       seeds, _THRESHOLD.value, _EXPORT.value)
      print(toy_sweep.format_toy_table(results))
    if _OUT.value:
      files.write_json(_OUT.value, results)
  else:
    captions = clip_r_precision.load_captions(_CAPTIONS.value)
    if _TRAIN.value:
      # pylint: disable-next=g-import-not-at-top
      from dreamfusion_jax import train_objects
      config = _CONFIG.value
      with config.unlocked():
        config.prompts = tuple(captions)
        config.prompts_file = ''
        config.seeds = tuple(_seeds())
      train_objects.train_batch(config, _ROOT.value, _BATCH_OBJECTS.value)
    results = clip_r_precision.clip_r_precision(
        runs.workdirs_under(_ROOT.value), captions,
        clip_models=_CLIP_MODELS.value or clip_r_precision.CLIP_MODELS,
        num_views=_NUM_VIEWS.value,
        renderer=clip_r_precision.CheckpointRenderer(_RESOLUTION.value))
    print(clip_r_precision.format_table(results))
    files.write_json(
        _OUT.value or os.path.join(_ROOT.value, 'clip_results.json'), results)


if __name__ == '__main__':
  launch.run(main)
