"""The train step, parallelism, checkpoints, the launcher and bad input."""

import glob
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import tiny
from dreamfusion_jax import checkpoint
from dreamfusion_jax import errors
from dreamfusion_jax import launch
from dreamfusion_jax import priors
from dreamfusion_jax import runs
from dreamfusion_jax import train
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = str(ROOT / 'tests' / 'train_worker.py')
LAUNCHER = str(ROOT / 'experiments' / 'train.py')
TINY = str(ROOT / 'configs' / 'tiny.py')


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = str(ROOT)
  return env


def _worker(out, devices, batch, steps, *extra):
  return subprocess.Popen(
      [sys.executable, WORKER, str(out), str(devices), str(batch),
       str(steps), *map(str, extra)], env=_env(), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out.decode()[-3000:]


@pytest.fixture(scope='module')
def one_device_four_views(tmp_path_factory):
  out = tmp_path_factory.mktemp('w') / 'one.npz'
  _finish(_worker(out, 1, 4, 3))
  return np.load(out)


def _assert_same_steps(run, reference):
  """Two layouts of the same 4 views took the same 3 steps.

  The worker trains at the peak learning rate from the first step, so the
  parameters move by about 1e-2; Adam's update hardly depends on the
  gradient's scale, so the gradient norm is what shows a sum over devices
  where a mean is due.
  """
  for out in (run, reference):
    np.testing.assert_array_equal(out['train_finite'], 1.0)
    assert np.abs(out['params'] - out['params0']).max() > 1e-3
  np.testing.assert_allclose(run['train_loss'], reference['train_loss'],
                             rtol=1e-5)
  np.testing.assert_allclose(run['train_grad_norm'],
                             reference['train_grad_norm'], rtol=1e-4)
  np.testing.assert_allclose(run['params'], reference['params'], atol=1e-6)


def test_four_devices_give_the_same_update(one_device_four_views, tmp_path):
  _finish(_worker(tmp_path / 'four.npz', 4, 1, 3))
  four = np.load(tmp_path / 'four.npz')
  assert int(one_device_four_views['devices']) == 1
  assert int(four['devices']) == 4
  _assert_same_steps(four, one_device_four_views)


def test_two_processes_give_the_same_update(one_device_four_views, tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [_worker(tmp_path / 'two.npz', 1, 2, 3, pid, 2, port)
           for pid in range(2)]
  for proc in procs:
    _finish(proc)
  two = np.load(tmp_path / 'two.npz')
  assert int(two['devices']) == 2
  _assert_same_steps(two, one_device_four_views)


@pytest.fixture(scope='module')
def tiny_setup():
  """(state, key, prior, make_step) for configs/tiny.py on this process."""
  config = tiny.get_config()
  mesh = train_step.make_mesh()
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  prior = train_step.replicate(priors.load_prior(config), mesh)
  state, key = train_step.initial_state(0, model, tx, mesh)
  return state, key, prior, lambda: train_step.make_train_step(
      config, model, tx, mesh)


_NO_ORIENTATION = {'loss.orientation_weight_start': 0.0,
                   'loss.orientation_weight_end': 0.0}


@pytest.mark.parametrize('overrides, expected', [
    ({}, True),  # Lit views after step 5 and the orientation loss.
    (_NO_ORIENTATION, True),  # Lit views after step 5.
    ({'shading.albedo_steps': 10}, True),  # The orientation loss.
    ({'shading.albedo_steps': 10, 'loss.orientation_weight_end': 0.0},
     False),  # An end weight of 0 turns the loss off, whatever the start.
    ({'shading.albedo_steps': 10, **_NO_ORIENTATION}, False),
    ({'shading.lit_prob': 0.0, **_NO_ORIENTATION}, False),
])
def test_normals_are_rendered_only_when_something_uses_them(overrides,
                                                            expected):
  config = default.get_config()  # Lit views and the orientation loss.
  config.num_steps = 10
  config.shading.albedo_steps = 5
  for key, value in overrides.items():
    group, name = key.split('.')
    config[group][name] = value
  assert train_step.needs_normals(config) == expected


def test_step_is_traced_once_and_leaves_the_prior_alone(tiny_setup):
  state, key, prior, make_step = tiny_setup
  step_fn = make_step()
  # The step donates its state: work on a copy so other tests keep theirs.
  state = jax.tree.map(jnp.copy, state)
  # JAX arrays are immutable: the step can spoil the prior only by taking
  # its buffers (donation) or by training it (a gradient).
  (state_info, prior_info, _), _ = step_fn.lower(state, prior, key).args_info
  assert all(info.donated for info in jax.tree.leaves(state_info))
  assert not any(info.donated for info in jax.tree.leaves(prior_info))
  params0 = jax.tree.map(np.array, state.params)
  for _ in range(3):
    state, metrics = step_fn(state, prior, key)
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3 and float(metrics['train/finite']) == 1.0
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       state.params, params0)
  assert max(jax.tree.leaves(moved)) > 0


def test_the_training_loss_gives_the_prior_no_gradient(tiny_setup):
  state, key, prior, _ = tiny_setup
  config = tiny.get_config()
  model = field.make_model(config)
  keys = jax.random.split(key, 2)
  # Every float array of the toy prior: its images, embeddings, schedule.
  frozen = {'images': prior.params['images'],
            'sq_norms': prior.params['sq_norms'],
            'alphas_cumprod': prior.alphas_cumprod,
            'view_embeddings': prior.view_embeddings,
            'uncond_embedding': prior.uncond_embedding}

  @jax.jit
  def grads(params, frozen, step):
    def loss(params, frozen):
      p = prior.replace(
          params={**prior.params, 'images': frozen['images'],
                  'sq_norms': frozen['sq_norms'],
                  'alphas_cumprod': frozen['alphas_cumprod']},
          alphas_cumprod=frozen['alphas_cumprod'],
          view_embeddings=frozen['view_embeddings'],
          uncond_embedding=frozen['uncond_embedding'])
      return train_step.batch_loss(params, p, keys, step, model=model,
                                   config=config)[0]
    return jax.grad(loss, argnums=(0, 1))(params, frozen)

  # Step 4: lit and textureless views, normals and the orientation loss.
  to_params, to_prior = grads(state.params, frozen, jnp.int32(4))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(to_params)) > 0
  for name, g in to_prior.items():
    np.testing.assert_array_equal(g, 0.0, err_msg=name)


def test_non_finite_updates_are_skipped_and_counted(tiny_setup):
  state, key, prior, make_step = tiny_setup
  broken = prior.replace(predict_noise=lambda *a: jnp.full(
      a[1].shape, jnp.nan))
  state = jax.tree.map(jnp.copy, state)
  step_fn = make_step()
  # One good step first, so that Adam's moments and count are not zero.
  state, metrics = step_fn(state, prior, key)
  assert float(metrics['train/finite']) == 1.0
  before = jax.tree.map(np.array, (state.params, state.opt_state))
  for _ in range(2):
    state, metrics = step_fn(state, broken, key)
  assert float(metrics['train/finite']) == 0.0
  assert int(state.bad_steps) == 2 and int(state.skipped) == 2
  assert int(state.step) == 3
  after = (state.params, state.opt_state)
  assert jax.tree.structure(after) == jax.tree.structure(before)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def _launch(workdir, *overrides, wait=True):
  cmd = [sys.executable, LAUNCHER, f'--config={TINY}', f'--workdir={workdir}',
         '--config.export.at_end=False', *overrides]
  proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out.decode()


def _final_params(workdir, step):
  _, _, params, restored = runs.load_trained(str(workdir), step)
  assert restored == step
  return jax.tree.map(np.asarray, params)


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  steps = ['--config.num_steps=8', '--config.checkpoint.every_steps=2',
           '--config.log.preview_every_steps=0']
  rc, out = _launch(tmp_path / 'straight', *steps)
  assert rc == 0, out[-3000:]
  proc = _launch(tmp_path / 'killed', *steps, wait=False)
  ckpts = tmp_path / 'killed' / 'checkpoints'
  deadline = time.time() + 300
  while not (ckpts / '4').exists() and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (ckpts / '8').exists(), 'the run finished before it was killed'
  newest = runs.latest_step(str(tmp_path / 'killed'))
  assert newest in (4, 6), newest
  rc, out = _launch(tmp_path / 'killed', *steps)
  assert rc == 0, out[-3000:]
  # Retraining from step 0 ends at the same parameters too: the run must
  # say where it resumed and log only the steps after it (every 2nd).
  assert f'Resumed from step {newest} in' in out, out[-3000:]
  logged = [int(s) for s in re.findall(r'\bstep (\d+)/8\b', out)]
  assert logged == list(range(newest + 2, 9, 2)), logged
  assert f'Trained steps {newest + 1}-8 at' in out, out[-3000:]
  a = _final_params(tmp_path / 'straight', 8)
  b = _final_params(tmp_path / 'killed', 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_too_many_bad_steps_stop_the_run_and_keep_its_checkpoint(
    tmp_path, monkeypatch):
  config = tiny.get_config()
  config.num_steps = 2
  config.log.preview_every_steps = 0
  config.export.at_end = False
  config.optim.max_bad_steps = 2
  # No normals: a faster compile (twice, since the NaN prior is new code).
  config.shading.lit_prob = 0.0
  config.loss.orientation_weight_start = 0.0
  config.loss.orientation_weight_end = 0.0
  workdir = str(tmp_path / 'run')
  train.train_and_export(config, workdir)  # A good checkpoint at step 2.
  # Extended, the run resumes with a prior that gives NaN: steps 3 and 4 are
  # skipped, and the check at step 4 (a log step) stops it.
  load_prior = priors.load_prior
  monkeypatch.setattr(priors, 'load_prior', lambda c: load_prior(c).replace(
      predict_noise=lambda *a: jnp.full(a[1].shape, jnp.nan)))
  config.num_steps = 8
  with pytest.raises(errors.UserError) as info:
    train.train_and_export(config, workdir)
  message = str(info.value)
  assert message.startswith('training stopped at step 4: 2 non-finite '
                            'updates in a row'), message
  assert 'checkpoint (step 2) is kept' in message and '\n' not in message
  assert runs.latest_step(workdir) == 2


def test_launcher_with_tiny_stable_diffusion_writes_everything(tmp_path):
  import tiny_models  # pylint: disable=g-import-not-at-top
  sd = tiny_models.make_tiny_stable_diffusion(tmp_path / 'sd')
  workdir = tmp_path / 'run'
  rc, out = _launch(workdir, f'--config.guidance.model={sd}',
                    '--config.prompt=a tiny test', '--config.num_steps=4',
                    '--config.export.at_end=True')
  assert rc == 0, out[-3000:]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['guidance']['model'] == str(sd)
  assert config['num_steps'] == 4
  assert (workdir / 'checkpoints' / '4').is_dir()
  assert glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*'))
  assert glob.glob(str(workdir / 'previews' / '*.png'))
  for ext in ('mp4', 'glb', 'obj', 'ply'):
    assert glob.glob(str(workdir / 'export' / f'*.{ext}')), ext
  assert 'steps/s' in out and 'ETA' in out


@pytest.mark.parametrize('key,value,match', [
    ('num_steps', 0, 'num_steps'),
    ('guidance.t_min', 0.99, 't_min'),
    ('guidance.t_max_end', 0.01, 't_max_end'),
    ('guidance.t_max_end', 0.99, 't_max_end'),
    ('loss.distortion_ramp', (0.8, 0.2), 'distortion_ramp'),
    ('loss.distortion_weight', -1.0, 'distortion_weight'),
    ('guidance.scale', -1.0, 'guidance.scale'),
    ('guidance.weighting', 'snr', 'guidance.weighting'),
    ('prompt', '  ', 'prompt is empty'),
    ('render.resolution', -4, 'render.resolution'),
    ('render.num_samples', 0, 'render.num_samples'),
    ('render.sampler', 'grid', 'render.sampler'),
    ('render.normals', 'sobel', 'render.normals'),
    ('render.field_chunk', -1, 'render.field_chunk'),
    ('render.occupancy_decay', 1.5, 'occupancy_decay'),
    ('render.occupancy_samples', 0, 'render.occupancy_samples'),
    ('camera.elevation_range', (50.0, 10.0), 'elevation_range'),
    ('camera.distance_range', (2.0, 1.0), 'distance_range'),
    ('batch_per_device', 0, 'batch_per_device'),
    ('checkpoint.every_steps', 0, 'checkpoint.every_steps'),
    ('nerf.field', 'voxels', 'nerf.field'),
    ('shading.lit_prob', 1.5, 'lit_prob'),
])
def test_bad_config_values_are_refused(key, value, match):
  config = tiny.get_config()
  *groups, name = key.split('.')
  target = config
  for g in groups:
    target = target[g]
  target[name] = value
  with pytest.raises(errors.UserError, match=match):
    train.validate_config(config)


def _one_sentence(out):
  lines = [l for l in out.strip().splitlines() if l.startswith('error:')]
  assert len(lines) == 1, out[-2000:]
  assert 'Traceback' not in out
  return lines[0]


def test_launcher_refuses_bad_input_without_touching_a_run(tmp_path):
  workdir = tmp_path / 'run'
  rc, out = _launch(workdir, '--config.num_steps=2',
                    '--config.log.preview_every_steps=0')
  assert rc == 0, out[-3000:]
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  config_before = (workdir / 'config.json').read_text()

  rc, out = _launch(workdir, '--config.guidance.t_min=0.99')
  assert rc == 2 and 't_min' in _one_sentence(out)
  rc, out = _launch(workdir, '--config.nerf.mlp_width=32')
  assert rc == 2 and 'nerf.mlp_width' in _one_sentence(out)
  rc, out = _launch(tmp_path / 'new', '--config.prompt=a purple elephant')
  assert rc == 2 and 'a blue sphere' in _one_sentence(out)
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'a_file').write_text('')
  rc, out = _launch(tmp_path / 'a_file' / 'run')
  assert rc == 2 and 'cannot be written' in _one_sentence(out)

  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before
  assert (workdir / 'config.json').read_text() == config_before


def test_unknown_config_field_is_one_sentence(tmp_path):
  proc = subprocess.run(
      [sys.executable, LAUNCHER, f'--config={TINY}',
       f'--workdir={tmp_path / "run"}', '--config.nerf.no_such_field=3'],
      env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith('error: ') and 'nerf.no_such_field' in lines[0]
  assert not (tmp_path / 'run').exists()


def test_unknown_bias_level_is_one_sentence(tmp_path):
  """A config file's own argument check (configs/toy_biased.py:<level>)."""
  proc = subprocess.run(
      [sys.executable, LAUNCHER, '--config=configs/toy_biased.py:extreme',
       f'--workdir={tmp_path / "run"}'],
      env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: 'extreme' is not a bias level")
  assert 'moderate, strong, severe' in lines[0]
  assert not (tmp_path / 'run').exists()


def test_checkpoint_restores_on_a_different_device_count(tmp_path):
  """A state saved from 4 devices restores onto this process's 1 device."""
  proc = subprocess.run(
      [sys.executable, '-c', (
          'import os, sys; os.environ["XLA_FLAGS"] = '
          '"--xla_force_host_platform_device_count=4"; '
          'import jax, jax.numpy as jnp; from jax.sharding import '
          'NamedSharding, PartitionSpec as P; '
          'from dreamfusion_jax import checkpoint, train_step; '
          'mesh = train_step.make_mesh(); assert jax.device_count() == 4; '
          'x = jax.device_put({"a": jnp.arange(6.0)}, '
          'NamedSharding(mesh, P())); '
          f'c = checkpoint.Checkpointer("{tmp_path}", 2); c.save(3, x); '
          'c.close()')], env=_env(), cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  ckpt = checkpoint.Checkpointer(str(tmp_path), 2)
  sharding = jax.sharding.NamedSharding(train_step.make_mesh(),
                                        jax.sharding.PartitionSpec())
  abstract = {'a': jax.ShapeDtypeStruct((6,), jnp.float32, sharding=sharding)}
  restored = ckpt.restore(abstract)
  ckpt.close()
  np.testing.assert_array_equal(restored['a'], np.arange(6.0))


def test_huge_page_restart_decision():
  glibc, thp = ('glibc', '2.36'), 'always [madvise] never\n'
  assert launch.huge_page_tunables({}, glibc, thp) == 'glibc.malloc.hugetlb=1'
  # Other tunables are kept; one naming hugetlb is the user's choice.
  assert launch.huge_page_tunables(
      {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=9'}, glibc, thp) == (
          'glibc.malloc.trim_threshold=9:glibc.malloc.hugetlb=1')
  assert launch.huge_page_tunables(
      {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, glibc, thp) is None
  assert launch.huge_page_tunables({'DREAMFUSION_HUGE_PAGES': '0'}, glibc,
                                   thp) is None
  assert launch.huge_page_tunables({}, ('glibc', '2.34'), thp) is None
  assert launch.huge_page_tunables({}, ('', ''), thp) is None
  assert launch.huge_page_tunables({}, glibc, 'always madvise [never]') is None


def test_launcher_restarts_once_with_its_arguments(tmp_path):
  script = tmp_path / 'show.py'
  script.write_text(
      'import os, sys\n'
      'from dreamfusion_jax import launch\n'
      'print("START", flush=True)\n'
      'launch.run(lambda argv: print("RAN", os.environ.get("GLIBC_TUNABLES"),'
      ' argv[1:]))\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop('GLIBC_TUNABLES', None)
  env.pop('DREAMFUSION_HUGE_PAGES', None)
  out = subprocess.run([sys.executable, '-u', str(script), 'a', 'b c'],
                       env=env, capture_output=True, text=True, timeout=120,
                       check=True).stdout
  expected = launch.huge_page_tunables(env)
  # Restarted (a second START) exactly when the decision says so.
  assert out.count('START') == (1 if expected is None else 2), out
  assert f"RAN {expected} ['a', 'b c']" in out, out
