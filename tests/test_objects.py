"""Many objects in one run: the batch's plan, its training, resumption and
bad input (object_batch.py, train_objects.py)."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import object_batch
from dreamfusion_jax import priors
from dreamfusion_jax import runs
from dreamfusion_jax import train
from dreamfusion_jax import train_objects
from dreamfusion_jax import train_step
from dreamfusion_jax.evaluation import toy_sweep
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.nerf import field

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCHER = str(ROOT / 'experiments' / 'train.py')
TINY = str(ROOT / 'configs' / 'tiny.py')


def _config(**overrides):
  config = tiny.get_config()
  config.export.at_end = False
  config.log.preview_every_steps = 0
  for key, value in overrides.items():
    *groups, name = key.split('.')
    target = config
    for group in groups:
      target = target[group]
    target[name] = value
  return config


def _params(workdir, step=None):
  _, _, params, _ = runs.load_trained(str(workdir), step)
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_a_batch_is_prompts_times_seeds_each_in_its_own_folder(tmp_path):
  prompts_file = tmp_path / 'prompts.txt'
  prompts_file.write_text('# toy objects\na snowman\n\n  a green cone  \n')
  config = _config(prompts=('a red cube',), prompts_file=str(prompts_file),
                   seeds=(3, 1))
  assert object_batch.is_batch(config)
  assert not object_batch.is_batch(_config())
  plan = object_batch.plan(config, str(tmp_path / 'run'))
  assert [(o.config.prompt, o.config.seed) for o in plan] == [
      ('a red cube', 3), ('a red cube', 1), ('a snowman', 3),
      ('a snowman', 1), ('a green cone', 3), ('a green cone', 1)]
  assert plan[2].workdir == str(tmp_path / 'run' / 'a_snowman' / 'seed_3')
  for obj in plan:
    # Each object is a plain single run, read as one by export/evaluate.
    assert not object_batch.is_batch(obj.config)
    assert obj.workdir == toy_sweep.toy_workdir(tmp_path / 'run',
                                                obj.config.prompt,
                                                obj.config.seed)
  # Seeds alone make a batch of one prompt.
  plan = object_batch.plan(_config(seeds=(0, 1)), str(tmp_path))
  assert [o.config.prompt for o in plan] == [tiny.get_config().prompt] * 2
  assert object_batch.folder_name('a "DSLR" photo of a cat/dog?') == (
      'a_DSLR_photo_of_a_catdog')


@pytest.mark.parametrize('overrides,match', [
    ({'prompts': ('a red cube', 'a snowman', 'a red cube')},
     'prompts 1 and 3 of the batch are the same'),
    ({'prompts': ('a red cube', 'a red cube?')},
     'the same folder name'),
    ({'prompts': ('a red cube', ' ')}, 'prompt 2 of the batch is empty'),
    ({'seeds': (0, 1, 0)}, 'repeats a seed'),
    ({'prompts_file': 'EMPTY'}, 'holds no prompts'),
    ({'prompts_file': 'MISSING'}, 'does not exist'),
])
def test_bad_batches_are_one_sentence(tmp_path, overrides, match):
  (tmp_path / 'EMPTY').write_text('# nothing yet\n\n')
  overrides = {k: str(tmp_path / v) if k == 'prompts_file' else v
               for k, v in overrides.items()}
  with pytest.raises(errors.UserError, match=match):
    object_batch.plan(_config(**overrides), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_objects_of_one_batch_differ_only_in_what_sets_the_embeddings(
    tmp_path):
  a = object_batch.ObjectRun(_config(), str(tmp_path / 'a'))
  b = object_batch.ObjectRun(_config(**{'guidance.scale': 50.0}),
                             str(tmp_path / 'b'))
  with pytest.raises(errors.UserError, match='has guidance.scale = 50.0 but '):
    train_objects.train_objects([a, b])
  with pytest.raises(errors.UserError, match='share a workdir'):
    train_objects.train_objects([a, object_batch.ObjectRun(
        _config(seed=5), a.workdir)])
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_too_many_objects_for_memory_name_the_fix():
  gib = 2**30
  train_objects.check_fits(16, 16, gib // 4, 2 * gib, 16 * gib, 4 * gib)
  with pytest.raises(errors.UserError,
                     match=r'64 objects need about 20\.0 GiB per device.*'
                     r'at most about 49 objects per device'):
    # 64 x 0.25 GiB states + 2 GiB prior + 2 GiB temporaries (1/32 GiB
    # per object) on 16 GiB: (16 - 2) / (0.25 + 1/32) = 49.8 fit.
    train_objects.check_fits(64, 64, gib // 4, 2 * gib, 16 * gib, 2 * gib)


def test_objects_follow_their_single_runs_and_are_trained_as_one_batch(
    tmp_path):
  base = _config()
  jobs = [(object_batch.single_config(base, 'a red cube', 1),
           toy_sweep.toy_workdir(tmp_path / 'batch', 'a red cube', 1)),
          (object_batch.single_config(base, 'a blue sphere', 0),
           toy_sweep.toy_workdir(tmp_path / 'batch', 'a blue sphere', 0))]
  timings = toy_sweep.train_or_reuse_many(jobs, export=False)
  assert [t['batch_objects'] for t in timings] == [2, 2]
  assert all(t['trained_now'] and t['train_seconds'] > 0 and t['step'] == 6
             for t in timings)
  assert runs.workdirs_under(str(tmp_path / 'batch')) == sorted(
      w for _, w in jobs)
  for _, workdir in jobs:
    assert list(pathlib.Path(workdir, 'tensorboard').glob('events.*'))

  # The second object against its own single run: the same seed, prompt,
  # views and prior, so only float rounding of the batched arithmetic
  # differs (about 4e-7 after 6 steps).
  train.train_and_export(jobs[1][0], str(tmp_path / 'single'))
  single = _params(tmp_path / 'single')
  batched = _params(jobs[1][1])
  other = _params(jobs[0][1])
  init, _ = train_step.initial_state(
      0, field.make_model(base), train_step.make_optimizer(base),
      train_step.make_mesh(), train_step.grid_resolution(base))
  init = [np.asarray(x) for x in jax.tree.leaves(init.params)]
  moved = max(np.abs(a - b).max() for a, b in zip(single, init))
  assert moved > 1e-3
  diff = max(np.abs(a - b).max() for a, b in zip(single, batched))
  assert diff < 1e-5, diff
  # Another object (another seed and prompt) is far from it.
  assert max(np.abs(a - b).max() for a, b in zip(single, other)) > 1e-2

  # A complete batch is reused, not retrained.
  again = toy_sweep.train_or_reuse_many(jobs, export=False)
  assert not any(t['trained_now'] for t in again)


def test_a_batch_killed_between_two_objects_saves_resumes_exactly(
    tmp_path, monkeypatch):
  config = _config(prompts=('a red cube', 'a snowman'), num_steps=8,
                   **{'checkpoint.every_steps': 2, 'checkpoint.keep': 1})
  train_objects.train_batch(config, str(tmp_path / 'straight'))

  killed = tmp_path / 'killed'
  second = object_batch.plan(config, str(killed))[1].workdir
  save = checkpoint_lib.Checkpointer.save

  def save_or_die(self, step, state):
    if step == 4 and self.directory.startswith(second):
      raise KeyboardInterrupt('killed between two objects\' saves')
    save(self, step, state)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', save_or_die)
  with pytest.raises(KeyboardInterrupt):
    train_objects.train_batch(config, str(killed))
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', save)
  plan = object_batch.plan(config, str(killed))
  assert runs.latest_step(plan[0].workdir) == 4
  assert runs.latest_step(plan[1].workdir) == 2

  train_objects.train_batch(config, str(killed))
  for obj, ref in zip(plan, object_batch.plan(config,
                                              str(tmp_path / 'straight'))):
    for a, b in zip(_params(obj.workdir, 8), _params(ref.workdir, 8)):
      np.testing.assert_array_equal(a, b)


def _launch(workdir, *overrides, wait=True):
  cmd = [sys.executable, LAUNCHER, f'--config={TINY}', f'--workdir={workdir}',
         *overrides]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


_BATCH_ARGS = ('--config.seeds=(0,1)', '--config.num_steps=8',
               '--config.checkpoint.every_steps=2')


def _launch_batch(tmp_path, workdir, *args, wait=True):
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('a red cube\n')
  return _launch(workdir, f'--config.prompts_file={prompts}', *_BATCH_ARGS,
                 *args, wait=wait)


def test_launcher_trains_and_exports_a_batch_and_refuses_bad_input(tmp_path):
  rc, out = _launch_batch(tmp_path, tmp_path / 'straight',
                          '--config.export.at_end=True')
  assert rc == 0, out[-3000:]
  assert 'object-steps/s' in out and 'ETA' in out
  batch = json.loads((tmp_path / 'straight' / 'batch.json').read_text())
  assert batch['seeds'] == [0, 1]
  for seed in (0, 1):
    workdir = tmp_path / 'straight' / 'a_red_cube' / f'seed_{seed}'
    config = runs.load_config(str(workdir))
    assert (config.prompt, config.seed, config.prompts) == (
        'a red cube', seed, [])
    assert list((workdir / 'previews').glob('*.png'))
    for ext in ('glb', 'obj', 'ply', 'mp4'):
      assert list((workdir / 'export').glob(f'*.{ext}')), (seed, ext)

  # Bad input: one sentence, exit status 2, the run untouched.
  ckpts = tmp_path / 'straight' / 'a_red_cube' / 'seed_0' / 'checkpoints'
  before = sorted(p.name for p in ckpts.iterdir())
  rc, out = _launch(tmp_path / 'straight', '--config.seeds=(0,0)')
  assert rc == 2 and 'repeats a seed' in out and 'Traceback' not in out
  assert sorted(p.name for p in ckpts.iterdir()) == before


@pytest.mark.slow
def test_launcher_resumes_a_batch_after_sigkill(tmp_path):
  """A real SIGKILL of the batch launcher (slow: three launches, about a
  minute of the suite's CPU time). The default run keeps the same resume
  in one process (test_a_batch_killed_between_two_objects_saves_resumes_
  exactly) and a real SIGKILL of a single run (test_train.py)."""
  rc, out = _launch_batch(tmp_path, tmp_path / 'straight')
  assert rc == 0, out[-3000:]
  killed = tmp_path / 'killed'
  proc = _launch_batch(tmp_path, killed, wait=False)
  ckpts = [killed / 'a_red_cube' / f'seed_{s}' / 'checkpoints' for s in (0, 1)]
  deadline = time.time() + 300
  while not (ckpts[0] / '4').exists() and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (ckpts[1] / '8').exists(), 'the run finished before the kill'
  rc, out = _launch_batch(tmp_path, killed)
  assert rc == 0, out[-3000:]
  assert re.search(r'Resumed 2 objects from step [246]\.', out), out[-3000:]
  for seed in (0, 1):
    a = _params(killed / 'a_red_cube' / f'seed_{seed}', 8)
    b = _params(tmp_path / 'straight' / 'a_red_cube' / f'seed_{seed}', 8)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_toy_objects_get_their_own_bias_view_prompts_and_negative_prompt():
  variants = [{}, {'toy.view_frequencies': (0.8, 0.15, 0.03, 0.02),
                   'toy.view_adherence': 0.2},
              {'guidance.view_prompts': False},
              {'negative_prompt': 'a red cube'}]
  configs = [object_batch.single_config(_config(**v), 'a snowman', 0)
             for v in variants]
  object_batch.check_batchable([object_batch.ObjectRun(c, str(i))
                                for i, c in enumerate(configs)])
  batched, axes = priors.load_object_prior(configs)
  assert axes.view_embeddings == 0 and axes.uncond_embedding == 0
  assert axes.negative_view_embeddings == 0
  for i, config in enumerate(configs):
    single = priors.load_prior(config)
    for name in prior_lib.EMBEDDINGS:
      np.testing.assert_array_equal(getattr(batched, name)[i],
                                    getattr(single, name))
    if i:  # Each variant changes some embedding of the first.
      assert any(np.abs(getattr(batched, n)[i] - getattr(batched, n)[0]).max()
                 > 1e-3 for n in prior_lib.EMBEDDINGS)
  np.testing.assert_array_equal(batched.params['images'],
                                priors.load_prior(configs[0]).params['images'])


def test_stable_diffusion_objects_get_their_own_prompts(tmp_path):
  import tiny_models  # pylint: disable=g-import-not-at-top
  folder = tiny_models.make_tiny_stable_diffusion(tmp_path / 'sd')
  configs = [object_batch.single_config(
      _config(**{'guidance.model': str(folder)}), prompt, 0)
             for prompt in ('a tiny cat', 'a tiny dog')]
  batched, axes = priors.load_object_prior(configs)
  assert axes.params is None or not any(
      a == 0 for a in jax.tree.leaves(axes.params))
  assert axes.view_embeddings == 0 and axes.uncond_embedding == 0
  for i, config in enumerate(configs):
    single = priors.load_prior(config)
    np.testing.assert_allclose(batched.view_embeddings[i],
                               single.view_embeddings, atol=1e-5)
    np.testing.assert_allclose(batched.uncond_embedding[i],
                               single.uncond_embedding, atol=1e-5)
  # The two prompts' embeddings differ where their texts do.
  assert np.abs(batched.view_embeddings[0] -
                batched.view_embeddings[1]).max() > 1e-3
  assert set(prior_lib.EMBEDDINGS) >= {'view_embeddings',
                                              'uncond_embedding'}


@pytest.mark.slow
def test_stable_diffusion_objects_step_like_their_single_runs(tmp_path):
  """One step of two objects (one batched UNet call) against the second
  object's single step (about 50 s: two tiny-SD compilations)."""
  import tiny_models  # pylint: disable=g-import-not-at-top
  folder = tiny_models.make_tiny_stable_diffusion(tmp_path / 'sd')
  configs = [object_batch.single_config(
      _config(**{'guidance.model': str(folder)}), prompt, 0)
             for prompt in ('a tiny cat', 'a tiny dog')]
  batched, axes = priors.load_object_prior(configs)
  config = configs[1]
  model, tx = field.make_model(config), train_step.make_optimizer(config)
  mesh = train_step.make_mesh()
  states, keys = zip(*[train_step.initial_state(seed, model, tx, mesh)
                       for seed in (7, 0)])
  step = train_step.make_object_train_step(config, model, tx, mesh, axes)
  out, metrics = step(train_objects.shard_objects(train_objects.stack(states),
                                                  mesh),
                      train_objects.shard_objects(batched, mesh, axes),
                      train_objects.shard_objects(train_objects.stack(keys),
                                                  mesh))
  np.testing.assert_array_equal(metrics['train/finite'], [1.0, 1.0])
  state, key = train_step.initial_state(0, model, tx, mesh)
  single, single_metrics = train_step.make_train_step(config, model, tx, mesh)(
      state, train_step.replicate(priors.load_prior(config), mesh), key)
  np.testing.assert_allclose(metrics['train/loss'][1],
                             single_metrics['train/loss'], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(out.params)):
    np.testing.assert_allclose(b[1], a, atol=1e-5)


def test_objects_split_over_two_devices_follow_the_one_device_batch(
    tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=str(ROOT))
  args = ['--config.num_steps=4', '--config.export.at_end=False',
          '--config.log.preview_every_steps=0']

  def launch(workdir, prompts):
    proc = subprocess.run(
        [sys.executable, LAUNCHER, f'--config={TINY}', f'--workdir={workdir}',
         f'--config.prompts={prompts}', *args], cwd=ROOT, env=env,
        capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr

  rc, out = launch(tmp_path / 'two', '("a red cube","a snowman")')
  assert rc == 0, out[-3000:]
  assert '2 objects (1 per device)' in out, out[-3000:]
  config = _config(prompts=('a red cube', 'a snowman'), num_steps=4)
  train_objects.train_batch(config, str(tmp_path / 'one'))
  for prompt in ('a_red_cube', 'a_snowman'):
    a = _params(tmp_path / 'two' / prompt / 'seed_0')
    b = _params(tmp_path / 'one' / prompt / 'seed_0')
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) < 1e-5

  rc, out = launch(tmp_path / 'three',
                   '("a red cube","a snowman","a green cone")')
  assert rc == 2 and 'do not split evenly over 2 devices' in out, out[-2000:]
  assert not (tmp_path / 'three' / 'a_red_cube' / 'seed_0' /
              'checkpoints').exists()
