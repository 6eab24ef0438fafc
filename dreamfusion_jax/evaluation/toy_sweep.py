"""The toy world's table: trained runs scored against the true objects.

The toy world (DESIGN.md section 7) has known answers instead of captions:
`toy_evaluate` trains (or reuses) one run per (toy prompt, seed) with
`train.train_and_export` and scores it against the true object with
`toy.metrics` (IoU, albedo error, normal angle and, for the snowman, the
Janus check);
`format_toy_table` prints the results.
"""

import copy
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ml_collections
import numpy as np

from dreamfusion_jax import errors
from dreamfusion_jax import files
from dreamfusion_jax import object_batch
from dreamfusion_jax import runs
from dreamfusion_jax import train
from dreamfusion_jax import train_objects
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field
from dreamfusion_jax.toy import metrics as toy_metrics
from dreamfusion_jax.toy import objects as toy_objects

PathLike = Union[str, os.PathLike]

TOY_PROMPTS = toy_objects.PROMPTS
TOY_RESULTS = 'toy_results.json'
# Per workdir: the training time measured when toy_evaluate trained it.
EVAL_FILE = 'eval.json'
IOU_RESOLUTION = 64
SNOWMAN = 'a snowman'


def toy_workdir(root: PathLike, prompt: str, seed: int) -> str:
  """ROOT/<prompt with spaces as _>/seed_<seed>: a batch run's layout."""
  return object_batch.object_workdir(os.fspath(root), prompt, seed)


def _read_json(path: str) -> Dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def train_or_reuse(config: ml_collections.ConfigDict, workdir: str,
                   export: bool) -> Dict:
  """`train_or_reuse_many` of one run."""
  return train_or_reuse_many([(config, workdir)], export)[0]


def train_or_reuse_many(jobs: Sequence[Tuple[ml_collections.ConfigDict, str]],
                        export: bool) -> List[Dict]:
  """Trains the runs (config, workdir) that are not complete, as one batch.

  A complete run is not touched (its config must still match). The others
  (and, with `export`, the complete ones, which then only export) train
  together in one program (`train_objects`): their configs may differ only
  in `object_batch.PER_OBJECT` fields (prompt, seed, and what sets the
  prior's text embeddings). A partial run resumes. Each trained run stores its
  share of the batch's wall time (prior loading and compilation included):
  the batch's seconds divided by its objects, added to what it stored
  before; 'batch_objects' says how many shared it.

  Returns:
    Per job: {'train_seconds': its training time (0 when unknown: trained
    elsewhere), 'batch_objects': objects it trained with (0 when unknown),
    'trained_now': bool, 'step': final step}.
  """
  complete = []
  for config, workdir in jobs:
    done = runs.latest_step(workdir)
    complete.append(done is not None and done >= config.num_steps)
  todo = [(c, w) for (c, w), full in zip(jobs, complete)
          if export or not full]
  for (config, workdir), full in zip(jobs, complete):
    if full and not export:
      train.validate_config(config)
      runs.prepare_workdir(config, workdir)  # Refuses another config's run.
  if todo:
    t0 = time.time()
    if len(todo) == 1:
      train.train_and_export(todo[0][0], todo[0][1])
    else:
      train_objects.train_objects(
          [object_batch.ObjectRun(c, w) for c, w in todo])
    share = (time.time() - t0) / len(todo)
  results = []
  for (config, workdir), full in zip(jobs, complete):
    eval_path = os.path.join(workdir, EVAL_FILE)
    stored = _read_json(eval_path)
    trained_now = not full
    if trained_now:
      stored = {'train_seconds': stored.get('train_seconds', 0.0) + share,
                'num_steps': config.num_steps, 'batch_objects': len(todo)}
      files.write_json(eval_path, stored)
    results.append({'train_seconds': float(stored.get('train_seconds', 0.0)),
                    'batch_objects': int(stored.get('batch_objects', 0)),
                    'trained_now': trained_now,
                    'step': int(runs.latest_step(workdir))})
  return results


def score_toy_run(workdir: PathLike, prompt: str, threshold: float,
                  resolution: int = IOU_RESOLUTION) -> Dict:
  """toy.metrics of a run's newest checkpoint against the object `prompt`.

  Returns:
    {'iou', 'albedo_error', 'normal_angle', 'janus'}; 'janus' is the
    janus_check dict for the snowman and None otherwise.
  """
  _, model, params, _ = runs.load_trained(os.fspath(workdir))
  density_fn, albedo_fn = field.point_functions(model, params)
  return {
      'iou': toy_metrics.iou(prompt, density_fn, threshold, resolution),
      'normal_angle': toy_metrics.normal_angle(prompt, density_fn),
      'albedo_error': toy_metrics.albedo_error(prompt, albedo_fn,
                                               density_fn=density_fn),
      'janus': (toy_metrics.janus_check(density_fn, albedo_fn, threshold)
                if prompt == SNOWMAN else None),
  }


def score_untrained(config: ml_collections.ConfigDict, prompt: str,
                    threshold: float,
                    resolution: int = IOU_RESOLUTION) -> Dict:
  """IoU and normal angle of the field a run of `config` starts from.

  The baseline a trained run must beat: the step-0 field (its density blob,
  nerf.blob, and the network's initial output) scored against `prompt`'s
  object like a trained run. With Magic3D's blob of radius 0.5 it is
  already a ball of radius ~0.47 at density 1.

  Returns:
    {'iou', 'normal_angle'}.
  """
  model = field.make_model(config)
  state, _ = train_step.initial_state(
      config.seed, model, train_step.make_optimizer(config),
      train_step.make_mesh(), train_step.grid_resolution(config))
  density_fn, _ = field.point_functions(
      model, field.active_params(state.params, 0, config))
  return {'iou': toy_metrics.iou(prompt, density_fn, threshold, resolution),
          'normal_angle': toy_metrics.normal_angle(prompt, density_fn)}


def _summary(runs: Sequence[Dict]) -> Dict:
  iou = np.asarray([r['iou'] for r in runs])
  albedo = np.asarray([r['albedo_error'] for r in runs])
  angle = np.asarray([r['normal_angle'] for r in runs])
  janus = [r['janus'] for r in runs if r['janus'] is not None]
  return {
      'seeds': [r['seed'] for r in runs],
      'iou': iou.tolist(),
      'iou_mean': float(iou.mean()),
      'iou_std': float(iou.std()),
      'albedo_error': albedo.tolist(),
      'albedo_error_mean': float(albedo.mean()),
      'normal_angle': angle.tolist(),
      'normal_angle_mean': float(angle.mean()),
      # Runs with a nose on the front / the back / a side (snowman only).
      'nose_front': sum(j['front'] for j in janus) if janus else None,
      'nose_back': sum(j['back'] for j in janus) if janus else None,
      'nose_side': (sum(j.get('side', False) for j in janus) if janus
                    else None),
      # Runs with the nose on the front and nowhere else: the right answer.
      'nose_right': (sum(j['front'] and not j['back']
                         and not j.get('side', False) for j in janus)
                     if janus else None),
      'minutes_per_run': float(np.mean([r['train_seconds']
                                        for r in runs])) / 60.0,
  }


def check_toy_inputs(config: ml_collections.ConfigDict,
                     prompts: Sequence[str],
                     seeds: Optional[Sequence[int]] = None) -> None:
  """Raises UserError unless `config` drives the exact prior and `prompts`
  (and `seeds`, where the evaluation takes them) are non-empty and known."""
  if config.guidance.model != 'toy':
    raise errors.UserError(
        f"guidance.model = '{config.guidance.model}'; this evaluation needs "
        'a toy config such as configs/toy.py.')
  if not prompts:
    raise errors.UserError('Pass at least one toy prompt (--prompts).')
  if seeds is not None and not seeds:
    raise errors.UserError('Pass at least one seed (--seeds).')
  for prompt in prompts:
    toy_objects.check_prompt(prompt, flag='--prompts')


def toy_evaluate(config: ml_collections.ConfigDict, root: PathLike,
                 prompts: Sequence[str] = TOY_PROMPTS,
                 seeds: Sequence[int] = (0, 1, 2), threshold: float = 5.0,
                 export: bool = False) -> Dict:
  """Trains (or reuses) and scores one toy run per (prompt, seed).

  Each run lives in `toy_workdir(root, prompt, seed)` and is trained with
  `config` with its prompt and seed set (and export.at_end = `export`); a
  complete run is reused as it is. Its newest checkpoint is scored with
  `score_toy_run`. The results are also written to ROOT/toy_results.json.

  Args:
    config: a toy config (guidance.model 'toy'), e.g. configs/toy.py.
    root: folder of the runs.
    prompts: toy prompts (toy.objects.PROMPTS).
    seeds: seeds per prompt.
    threshold: density of the surface for the IoU and the Janus check.
    export: whether runs export turntables and meshes when they finish.

  Returns:
    A JSON-serialisable dict: 'threshold', 'iou_resolution', 'num_steps',
    'runs' (one dict per (prompt, seed): 'prompt', 'seed', 'workdir',
    'step', 'iou', 'albedo_error', 'normal_angle', 'janus', 'train_seconds',
    'trained_now') and 'prompts' {prompt: summary over seeds: 'seeds',
    'iou', 'iou_mean', 'iou_std', 'albedo_error', 'albedo_error_mean',
    'normal_angle', 'normal_angle_mean', 'nose_front', 'nose_back',
    'nose_side', 'nose_right' (run counts, the last of runs with a nose on
    the front and nowhere else; None but for the snowman),
    'minutes_per_run', 'untrained' (score_untrained of the first seed's
    config: what the run started from)}.
  """
  check_toy_inputs(config, prompts, seeds)
  config = copy.deepcopy(config)
  config.export.at_end = bool(export)
  pairs = [(prompt, int(seed)) for prompt in prompts for seed in seeds]
  jobs = [(object_batch.single_config(config, prompt, seed),
           toy_workdir(root, prompt, seed)) for prompt, seed in pairs]
  # The runs still to train, trained together as one batch.
  timings = train_or_reuse_many(jobs, export)
  runs = []
  for (prompt, seed), (_, workdir), timing in zip(pairs, jobs, timings):
    scores = score_toy_run(workdir, prompt, threshold)
    runs.append({'prompt': prompt, 'seed': seed, 'workdir': workdir,
                 **timing, **scores})
  results = {
      'threshold': float(threshold),
      'iou_resolution': IOU_RESOLUTION,
      'num_steps': int(config.num_steps),
      'runs': runs,
      'prompts': {p: _summary([r for r in runs if r['prompt'] == p])
                  for p in prompts},
  }
  # The baseline: each prompt's field at step 0 (of its first seed).
  for prompt in prompts:
    results['prompts'][prompt]['untrained'] = score_untrained(
        object_batch.single_config(config, prompt, int(seeds[0])), prompt,
        threshold)
  files.write_json(os.path.join(os.fspath(root), TOY_RESULTS), results)
  return results


def format_toy_table(results: Dict) -> str:
  """A plain-text table of toy_evaluate's results, one row per prompt."""
  header = (f"{'prompt':<16}{'seeds':>6}  {'IoU mean+-std':<15}"
            f"{'IoU per seed':<24}{'albedo err':>11}{'normal deg':>11}"
            f"{'nose F/B/S':>11}{'min/run':>9}{'step 0 IoU/deg':>16}")
  lines = [
      f"Toy world: IoU at density > {results['threshold']:g} on a "
      f"{results['iou_resolution']}^3 grid, {results['num_steps']} steps",
      '', header]
  for prompt, row in results['prompts'].items():
    per_seed = ' '.join(f'{v:.3f}' for v in row['iou'])
    nose = ('-' if row['nose_front'] is None
            else f"{row['nose_front']}/{row['nose_back']}/"
            f"{row['nose_side']}")
    lines.append(
        f"{prompt:<16}{len(row['seeds']):>6}  "
        f"{row['iou_mean']:.3f}+-{row['iou_std']:.3f}".ljust(39)
        + f"{per_seed:<24}{row['albedo_error_mean']:>11.3f}"
        f"{row['normal_angle_mean']:>11.1f}{nose:>11}"
        f"{row['minutes_per_run']:>9.2f}"
        + (f"{row['untrained']['iou']:>10.3f}/"
           f"{row['untrained']['normal_angle']:<5.1f}"
           if 'untrained' in row else ''))
  return '\n'.join(lines)
