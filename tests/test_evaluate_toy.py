"""The toy-world evaluation and the checkpoint renderer of the CLIP metric.

One tiny run (configs/tiny.py, 2 steps) is trained once per module and
shared; one default toy run (the snowman) checks the whole method end to
end; the sphere's targets, the full five-prompt table and the five-seed
nose checks are slow tests.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from configs import toy
from dreamfusion_jax import render
from dreamfusion_jax import runs
from dreamfusion_jax import shading
from dreamfusion_jax import train
from dreamfusion_jax.evaluation import ablation
from dreamfusion_jax.evaluation import clip_r_precision
from dreamfusion_jax.evaluation import toy_sweep
from dreamfusion_jax.nerf import field
from dreamfusion_jax.toy import metrics as toy_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = 'a snowman'  # The one prompt with a Janus check.


def _tiny_config():
  config = tiny.get_config()
  config.num_steps = 2
  # A constant background, so that textureless renders are grey throughout.
  config.nerf.background = 'constant'
  config.log.preview_every_steps = 0
  return config


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp('toy')
  start = time.time()
  results = toy_sweep.toy_evaluate(_tiny_config(), root, [PROMPT], [0])
  # (root, results, wall time of the evaluation, training included.)
  return root, results, time.time() - start


def test_results_structure(evaluated):
  root, results, _ = evaluated
  assert set(results['prompts']) == {PROMPT}
  (run,) = results['runs']
  assert run['prompt'] == PROMPT and run['seed'] == 0
  assert run['workdir'] == toy_sweep.toy_workdir(root, PROMPT, 0)
  assert run['workdir'].endswith(os.path.join('a_snowman', 'seed_0'))
  assert run['step'] == 2 and run['trained_now']
  assert 0.0 <= run['iou'] <= 1.0
  assert 0.0 <= run['albedo_error'] <= 1.0
  assert isinstance(run['janus']['front'], bool)
  assert run['train_seconds'] > 0
  row = results['prompts'][PROMPT]
  assert row['seeds'] == [0] and row['iou'] == [run['iou']]
  assert row['nose_front'] in (0, 1) and row['nose_back'] in (0, 1)
  with open(root / toy_sweep.TOY_RESULTS) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  table = toy_sweep.format_toy_table(results)
  assert PROMPT in table and f"{run['iou']:.3f}" in table
  # The step-0 baseline of the run's config, printed with it.
  untrained = row['untrained']
  assert untrained == toy_sweep.score_untrained(
      runs.load_config(run['workdir']), PROMPT, 5.0)
  assert f"{untrained['iou']:.3f}/" in table


def test_untrained_sphere_is_the_blob():
  """The toy recipe starts from Magic3D's blob, softplus(10 (1 - r / 0.5)):
  density 1 at r = 0.5 (1 - ln(e - 1) / 10) = 0.4729, a ball whose IoU
  with the true sphere (radius 0.5) is (0.4729 / 0.5)^3 = 0.846, with
  exact normals. Trained runs are compared with this (README)."""
  config = toy.get_config()
  scores = toy_sweep.score_untrained(config, 'a blue sphere', 1.0)
  radius = 0.5 * (1.0 - np.log(np.e - 1.0) / config.nerf.blob_density)
  assert scores['iou'] == pytest.approx((radius / 0.5)**3, abs=0.01)
  assert scores['normal_angle'] < 2.0
  # A torus is not a ball: the blob fills its hole.
  assert toy_sweep.score_untrained(config, 'a yellow torus', 1.0)['iou'] < 0.3


def test_results_score_the_newest_checkpoint_of_each_run(evaluated):
  _, results, wall_seconds = evaluated
  (run,) = results['runs']
  assert results['threshold'] == 5.0 and results['num_steps'] == 2
  assert results['iou_resolution'] == toy_sweep.IOU_RESOLUTION
  # The scores are those of the run's newest checkpoint, against the prompt's
  # object, at the table's threshold and grid.
  _, model, params, step = runs.load_trained(run['workdir'])
  assert step == run['step'] == 2
  density_fn, albedo_fn = field.point_functions(model, params)
  assert run['iou'] == toy_metrics.iou(PROMPT, density_fn, 5.0,
                                       toy_sweep.IOU_RESOLUTION)
  assert run['albedo_error'] == toy_metrics.albedo_error(
      PROMPT, albedo_fn, density_fn=density_fn)
  assert run['janus'] == toy_metrics.janus_check(density_fn, albedo_fn, 5.0)
  # The time is the training's own, stored with the run, and within the
  # wall time of the whole evaluation.
  assert 0 < run['train_seconds'] < wall_seconds
  with open(os.path.join(run['workdir'], toy_sweep.EVAL_FILE)) as f:
    assert json.load(f)['train_seconds'] == run['train_seconds']
  # The prompt's row summarises its one run.
  row = results['prompts'][PROMPT]
  assert row['iou_mean'] == run['iou'] and row['iou_std'] == 0.0
  assert row['albedo_error'] == [run['albedo_error']]
  assert row['albedo_error_mean'] == run['albedo_error']
  assert row['nose_front'] == int(run['janus']['front'])
  assert row['nose_back'] == int(run['janus']['back'])
  assert row['nose_side'] == int(run['janus']['side'])
  j = run['janus']
  assert row['nose_right'] == int(j['front'] and not j['back']
                                  and not j['side'])
  assert row['minutes_per_run'] == pytest.approx(run['train_seconds'] / 60)


def test_rerun_reuses_the_finished_run(evaluated, monkeypatch):
  root, first, _ = evaluated
  workdir = first['runs'][0]['workdir']
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  before = {p: os.stat(os.path.join(ckpt_dir, p)).st_mtime_ns
            for p in os.listdir(ckpt_dir)}

  def no_training(*args):
    raise AssertionError(f'trained again: {args}')

  monkeypatch.setattr(train, 'train_and_export', no_training)
  again = toy_sweep.toy_evaluate(_tiny_config(), root, [PROMPT], [0])
  after = {p: os.stat(os.path.join(ckpt_dir, p)).st_mtime_ns
           for p in os.listdir(ckpt_dir)}
  assert after == before
  (run,) = again['runs']
  assert not run['trained_now']
  with open(os.path.join(workdir, toy_sweep.EVAL_FILE)) as f:
    stored = json.load(f)
  assert run['train_seconds'] == stored['train_seconds']
  assert run['train_seconds'] == first['runs'][0]['train_seconds']
  assert run['iou'] == first['runs'][0]['iou']


def test_rerun_with_another_config_is_refused(evaluated):
  root, _, _ = evaluated
  config = _tiny_config()
  config.guidance.scale = 7.0
  with pytest.raises(toy_sweep.errors.UserError, match='guidance.scale'):
    toy_sweep.toy_evaluate(config, root, [PROMPT], [0])


@pytest.mark.parametrize('mode', clip_r_precision.MODES)
def test_checkpoint_renderer(evaluated, mode):
  _, results, _ = evaluated
  workdir = results['runs'][0]['workdir']
  renderer = clip_r_precision.CheckpointRenderer(resolution=8)
  cams = clip_r_precision.protocol_cameras(3)
  images = renderer(workdir, cams, mode)
  assert images.shape == (3, 8, 8, 3)
  assert images.dtype == np.float32
  # The newest checkpoint under each camera's headlight (ambient 0.1,
  # diffuse 0.9): on its albedo for 'color', on white for 'geo'.
  config, model, params, step = runs.load_trained(workdir)
  assert step == results['runs'][0]['step']
  want = render.render_cameras(
      model, params, cams, 8, config.render,
      shading.lambertian(textureless=mode == 'geo'))['rgb']
  np.testing.assert_allclose(images, np.clip(want, 0.0, 1.0), atol=1e-6)


def test_geo_renders_are_grey(evaluated):
  # Textureless shading: white albedo, so every pixel is grey (r = g = b)
  # against the white background.
  _, results, _ = evaluated
  renderer = clip_r_precision.CheckpointRenderer(resolution=8)
  cams = clip_r_precision.protocol_cameras(2)
  images = renderer(results['runs'][0]['workdir'], cams, 'geo')
  np.testing.assert_allclose(images[..., 0], images[..., 1], atol=1e-5)
  np.testing.assert_allclose(images[..., 0], images[..., 2], atol=1e-5)
  # The colour renders are not: the albedo shows in them.
  color = renderer(results['runs'][0]['workdir'], cams, 'color')
  assert np.abs(color - images).max() > 0.05


def test_non_toy_config_is_refused(tmp_path):
  config = toy.get_config()
  config.guidance.model = 'stable_diffusion'
  with pytest.raises(toy_sweep.errors.UserError, match='toy'):
    toy_sweep.toy_evaluate(config, tmp_path, ['a red cube'], [0])


def test_default_toy_run_grows_the_snowmans_nose_on_the_front(tmp_path):
  """End to end: configs/toy.py as shipped, the snowman, seed 0.

  About two minutes: the default run without its export, scored like the
  table's runs (occupancy is density > 1). Its nose grows on the front, as
  it did in every seed of five with the paper's view prompts; three of
  those also grew a second one on the back (the five-seed checks are
  slow, below), and its shape holds.
  """
  config = toy.get_config()
  config.prompt = toy_sweep.SNOWMAN
  results = toy_sweep.toy_evaluate(config, tmp_path, [config.prompt], [0],
                                   threshold=1.0)
  (run,) = results['runs']
  assert run['step'] == config.num_steps
  assert results['prompts'][config.prompt]['nose_front'] == 1, run
  # Seed 0 measured IoU 0.80 and normals 8.9 degrees (six seeds: 0.85 and
  # 8.3); a recipe that breaks the shape falls well below either.
  assert run['iou'] >= 0.7, run
  assert run['normal_angle'] <= 15.0, run


@pytest.mark.slow
def test_default_toy_run_recovers_the_sphere(tmp_path):
  """configs/toy.py as shipped learns the sphere's shape (about two minutes).

  The recipe's sphere targets: IoU 0.85 and normals within 10 degrees;
  seeds 0-5 measured 0.94-0.98 and 5-7 degrees (README). Slow so that the
  default run's one end-to-end toy run can be the snowman, whose nose the
  Janus work asks the default run to check.
  """
  config = toy.get_config()
  assert config.prompt == 'a blue sphere'
  results = toy_sweep.toy_evaluate(config, tmp_path, [config.prompt], [0],
                                   threshold=1.0)
  (run,) = results['runs']
  assert run['step'] == config.num_steps
  assert run['iou'] >= 0.85, run
  # The starting blob scores 0.84 and 0.2 degrees; a field the textureless
  # renders roughen, 17-34 degrees (README); a flat field 90.
  assert run['normal_angle'] <= 10.0, run


def _evaluate(root, prompts, seeds, threshold=5.0, overrides=()):
  """experiments/evaluate.py --mode=toy with configs/toy.py; the results.

  `overrides`: extra --config.<key>=<value> flags.
  """
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'experiments' / 'evaluate.py'),
       '--mode=toy', f'--root={root}', f"--prompts={','.join(prompts)}",
       f'--seeds={seeds}', f'--threshold={threshold}',
       f"--config={ROOT / 'configs' / 'toy.py'}", *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for prompt in prompts:
    assert prompt in proc.stdout
  with open(root / toy_sweep.TOY_RESULTS) as f:
    return json.load(f)['prompts']


class _ShapeTargetMissed(AssertionError):
  """A toy-table target missed; a crash of the evaluation is not this."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=_ShapeTargetMissed, reason=(
    'Not reached with the Stable Diffusion recipe in the toy world (README): '
    'the sphere meets its targets, but the cube stays at the blob (IoU 0.71, '
    'normals 45 degrees), the cone and torus at IoU 0.66-0.67.'))
def test_full_toy_table(tmp_path):
  """The recipe issue's targets over seeds 0-2 (about 45 minutes): IoU at
  density > 1 of 0.85 (sphere, cube), 0.75 (cone), 0.7 (torus); normals
  within 10 degrees on the sphere and the cube's faces."""
  rows = _evaluate(tmp_path, ['a blue sphere', 'a red cube', 'a green cone',
                              'a yellow torus'], '0,1,2', threshold=1.0)
  iou = {p: row['iou_mean'] for p, row in rows.items()}
  angle = {p: row['normal_angle_mean'] for p, row in rows.items()}
  want = {'a blue sphere': 0.85, 'a red cube': 0.85, 'a green cone': 0.75,
          'a yellow torus': 0.7}
  missed = [p for p in want if iou[p] < want[p]] + [
      p for p in ('a blue sphere', 'a red cube') if angle[p] > 10.0]
  if missed:
    raise _ShapeTargetMissed((missed, iou, angle))


class _NoseNotOnTheFront(AssertionError):
  """The Janus target missed; a crash of the evaluation is not this."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=_NoseNotOnTheFront, reason=(
    'Not reached with the paper\'s view prompts in the toy world (README, '
    'the Janus problem): the nose grew on the front only in 2 of 5 seeds '
    'and on the front and the back in 3; Perp-Neg reaches it (below).'))
def test_snowman_has_its_nose_on_the_front(tmp_path):
  """The Janus target: the nose on the front only (no second nose on the
  back or a side) in at least 4 of 5 seeds (10 min)."""
  row = _evaluate(tmp_path, [toy_sweep.SNOWMAN], '0,1,2,3,4',
                  threshold=1.0)[toy_sweep.SNOWMAN]
  if row['nose_right'] < 4:
    raise _NoseNotOnTheFront(row)


@pytest.mark.slow
def test_perp_neg_puts_the_nose_on_the_front(tmp_path):
  """The Janus target with Perp-Neg on the exact prior (about 10 min):
  the nose on the front only in at least 4 of 5 seeds, none on the back
  (README: 4 of 5, the fifth grew no nose)."""
  row = _evaluate(tmp_path, [toy_sweep.SNOWMAN], '0,1,2,3,4', threshold=1.0,
                  overrides=['--config.guidance.perp_neg=True'])
  row = row[toy_sweep.SNOWMAN]
  if row['nose_right'] < 4 or row['nose_back'] > 0:
    raise _NoseNotOnTheFront(row)


def test_shading_ablation_variants():
  """Albedo-only never lights a view, + lit never drops the texture, and
  the full recipe does both."""
  config = _tiny_config()
  for variant, lit, textureless in (('albedo', False, False),
                                    ('lit', True, False),
                                    ('textureless', True, True)):
    c = ablation.variant_config(config, variant)
    modes = jax.vmap(lambda k: shading.sample(  # pylint: disable=cell-var-from-loop
        k, c.num_steps, c.shading, 1))(jax.random.split(jax.random.key(0),
                                                         64))
    assert bool(np.any(np.asarray(modes.diffuse) > 0)) == lit, variant
    assert bool(np.any(np.asarray(modes.textureless) > 0)) == textureless


@pytest.mark.slow
def test_shading_ablation_trains_and_scores_every_variant(tmp_path):
  """The ablation's three tiny runs and their table (slow: three
  compilations, about 50 s of the suite's CPU time)."""
  results = ablation.shading_ablation(_tiny_config(), tmp_path,
                                      ['a red cube'], [0], threshold=1.0)
  assert set(results['variants']) == set(ablation.VARIANTS)
  table = ablation.format_ablation_table(results)
  assert 'a red cube' in table and table.count('|') > 10
  assert (tmp_path / ablation.ABLATION_RESULTS).exists()
