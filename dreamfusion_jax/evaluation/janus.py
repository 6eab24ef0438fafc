"""The Janus table: where the snowman's nose grows, by fix and by prior bias.

The snowman's nose is on +x (its front). A run trained with a view-biased
prior (configs/toy_biased.py) may grow it on the back as well (the Janus
problem) or instead. `janus_evaluate` trains (or reuses) one run per
(prior setting, method, seed) and classifies each with toy.metrics'
janus_check:

  right    a nose on the front only
  flipped  on the back, none on the front
  janus    on the front and on the back or a side (two faces)
  side     on a side (left or right) only
  none     nowhere

Methods are the guidance settings of guidance/views.py (METHODS); prior
settings are (toy.view_frequencies, toy.view_adherence) pairs, the exact
prior's and configs/toy_biased.py's levels. `format_janus_table` prints a
markdown table, one row per method and one column per prior setting.
"""

import copy
import os
import time
from typing import Dict, Mapping, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamfusion_jax import errors
from dreamfusion_jax import files
from dreamfusion_jax import object_batch
from dreamfusion_jax import runs as runs_lib
from dreamfusion_jax.evaluation import toy_sweep
from dreamfusion_jax.nerf import field
from dreamfusion_jax.toy import exact_prior
from dreamfusion_jax.toy import metrics as toy_metrics

PathLike = Union[str, os.PathLike]

JANUS_RESULTS = 'janus_results.json'
# Guidance settings per method, in the table's order, and their labels.
METHODS = {
    'no_views': {'view_prompts': False},
    'paper': {},
    'negative': {'negative_view_prompts': True},
    'interpolation': {'view_interpolation': True},
    'perp_neg': {'perp_neg': True},
}
LABELS = {
    'no_views': 'no view prompts',
    'paper': 'view prompts (paper)',
    'negative': '+ negative view prompts',
    'interpolation': 'interpolated views',
    'perp_neg': 'Perp-Neg',
}
OUTCOMES = ('right', 'flipped', 'janus', 'side', 'none')
# The exact prior: every view equally often, view prompts always obeyed.
EXACT = ((0.25, 0.25, 0.25, 0.25), 1.0)

PriorSetting = Tuple[Sequence[float], float]


def classify(check: Mapping[str, object]) -> str:
  """One of OUTCOMES from a janus_check dict (its 'front', 'back', 'side').

  Checks written before side noses were scored have no 'side': none there.
  """
  front, back = bool(check['front']), bool(check['back'])
  side = bool(check.get('side', False))
  if front:
    return 'janus' if back or side else 'right'
  if back:
    return 'flipped'
  return 'side' if side else 'none'


def run_config(config: ml_collections.ConfigDict, method: str,
               setting: PriorSetting, seed: int
               ) -> ml_collections.ConfigDict:
  """`config` for the snowman with `method`'s guidance and `setting`'s bias."""
  if method not in METHODS:
    raise errors.UserError(
        f'{method!r} is not a Janus method; use one of '
        f'{", ".join(repr(m) for m in METHODS)}.')
  config = copy.deepcopy(config)
  config.prompt = toy_sweep.SNOWMAN
  config.seed = int(seed)
  config.export.at_end = False
  for name, value in METHODS[method].items():
    config.guidance[name] = value
  frequencies, adherence = setting
  config.toy.view_frequencies = tuple(float(f) for f in frequencies)
  config.toy.view_adherence = float(adherence)
  return config


def _slug(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name).strip('_')


def janus_evaluate(config: ml_collections.ConfigDict, root: PathLike,
                   settings: Mapping[str, PriorSetting],
                   methods: Sequence[str] = tuple(METHODS),
                   seeds: Sequence[int] = (0, 1, 2, 3, 4),
                   threshold: float = 5.0) -> Dict:
  """Trains (or reuses) and classifies one snowman per (setting, method, seed).

  Runs live in ROOT/<setting>/<method>/seed_<seed>; complete ones are
  reused, and those still to train train in batches
  (toy_sweep.train_or_reuse_many): one per method's guidance program, over
  every setting and seed (no_views and paper share one). Results are also
  written to ROOT/janus_results.json.

  Args:
    config: a toy config (e.g. configs/toy.py); prompt, seed, guidance
      fixes and the toy prior's bias are set per run.
    root: folder of the runs.
    settings: {name: (view_frequencies, view_adherence)}.
    methods: keys of METHODS.
    seeds: seeds per (setting, method).
    threshold: surface density of the Janus check.

  Returns:
    {'threshold', 'num_steps', 'wall_seconds' (this call), 'train_seconds'
    (all runs' stored training time), 'settings', 'methods', 'runs' (one
    dict per run: 'setting', 'method', 'seed', 'outcome', 'janus',
    'train_seconds', 'batch_objects': runs trained with it, 0 when
    reused), 'counts' {setting: {method: {outcome: runs}}}}.
  """
  if config.guidance.model != 'toy':
    raise errors.UserError(
        f"guidance.model = '{config.guidance.model}'; the Janus table needs "
        'a toy config such as configs/toy.py.')
  if not settings or not methods or not seeds:
    raise errors.UserError(
        'Pass at least one prior setting, one method and one seed.')
  start = time.time()
  # Settings and view prompts on or off change only the prior's text
  # embeddings (object_batch.PER_OBJECT), so every run whose method's other
  # guidance keys agree trains in one batch: four batches for the five
  # methods (no_views with paper), each over all settings and seeds.
  batches = {}
  for name, setting in settings.items():
    for method in methods:
      static = tuple(sorted(
          (k, v) for k, v in METHODS[method].items()
          if f'guidance.{k}' not in object_batch.PER_OBJECT))
      batches.setdefault(static, []).extend(
          ((name, method, seed), run_config(config, method, setting, seed),
           os.path.join(os.fspath(root), _slug(name), method,
                        f'seed_{seed}')) for seed in seeds)
  by_run = {}
  for batch in batches.values():
    timings = toy_sweep.train_or_reuse_many(
        [(c, w) for _, c, w in batch], export=False)
    for (run, _, workdir), timing in zip(batch, timings):
      _, model, params, _ = runs_lib.load_trained(workdir)
      density_fn, albedo_fn = field.point_functions(model, params)
      check = toy_metrics.janus_check(density_fn, albedo_fn, threshold)
      by_run[run] = {'setting': run[0], 'method': run[1], 'seed': int(run[2]),
                     'outcome': classify(check), 'janus': check,
                     'train_seconds': timing['train_seconds'],
                     'batch_objects': timing['batch_objects']}
  runs = [by_run[(name, method, seed)] for name in settings
          for method in methods for seed in seeds]
  counts = {name: {method: {o: sum(r['outcome'] == o for r in runs
                                   if r['setting'] == name
                                   and r['method'] == method)
                            for o in OUTCOMES} for method in methods}
            for name in settings}
  results = {
      'threshold': float(threshold),
      'num_steps': int(config.num_steps),
      'wall_seconds': time.time() - start,
      'train_seconds': float(sum(r['train_seconds'] for r in runs)),
      'settings': {n: [list(map(float, s[0])), float(s[1])]
                   for n, s in settings.items()},
      'methods': list(methods),
      'runs': runs,
      'counts': counts,
  }
  files.write_json(os.path.join(os.fspath(root), JANUS_RESULTS), results)
  return results


def format_janus_table(results: Dict) -> str:
  """Markdown: per method and prior setting, the runs of each OUTCOME."""
  names = list(results['counts'])
  seeds = {r['seed'] for r in results['runs']}
  lines = [
      f"Snowman nose over {len(seeds)} seed(s), {results['num_steps']} "
      f"steps, density > {results['threshold']:g}: runs with the nose on "
      'the front only / the back, not the front / the front and the back or '
      'a side (Janus) / a side only / none.', '',
      '| method | ' + ' | '.join(
          f'{n} (f = {tuple(results["settings"][n][0])}, '
          f'a = {results["settings"][n][1]:g})' for n in names) + ' |',
      '|---' * (len(names) + 1) + '|']
  for method in results['methods']:
    cells = []
    for name in names:
      c = results['counts'][name][method]
      cells.append(' / '.join(str(c[o]) for o in OUTCOMES))
    lines.append(f'| {LABELS[method]} | ' + ' | '.join(cells) + ' |')
  minutes = results['train_seconds'] / 60
  per_run = minutes / max(len(results['runs']), 1)
  lines += ['', f"Wall time {results['wall_seconds'] / 60:.1f} min "
            f'(training stored for these runs: {minutes:.1f} min, '
            f'{per_run:.2f} min per run).']
  return '\n'.join(lines)


def posterior_group_shares(params, images, embedding, t: int, draws: int,
                           key) -> np.ndarray:
  """The toy prior's mean posterior mass on each group, given noised `images`.

  Each image is noised `draws` times at timestep `t` (z_t = a_t x + s_t eps)
  and the posterior over the prior's photographs (exact_prior.
  posterior_logits with `embedding`) is summed by group: where the exact
  denoiser takes its answer from. A group of weight 0 gets none; as t -> 0
  all the mass goes to the nearest photograph among groups of positive
  weight, whatever the weights.

  Args:
    params: the toy prior's params ('images', 'groups', 'alphas_cumprod').
    images: [B, H, W, 3] in [-1, 1].
    embedding: [G] group weights.
    t: timestep.
    draws: noise draws per image.
    key: PRNG key of the noise.

  Returns:
    [G] shares, averaged over images and draws; they sum to 1.
  """
  abar = params['alphas_cumprod'][t]
  eps = jax.random.normal(key, (draws, *images.shape))
  z = jnp.sqrt(abar) * images[None] + jnp.sqrt(1.0 - abar) * eps
  z = z.reshape(-1, *images.shape[1:])
  emb = jnp.broadcast_to(embedding, (z.shape[0], embedding.shape[-1]))
  logits = exact_prior.posterior_logits(
      params, z, jnp.full((z.shape[0],), t, jnp.int32), emb)
  p = jax.nn.softmax(logits, axis=-1)  # [B * draws, N]
  by_group = jax.nn.one_hot(params['groups'], embedding.shape[-1])  # [N, G]
  return np.asarray(jnp.mean(p @ by_group, axis=0))
