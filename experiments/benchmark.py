r"""Time of one SDS train step, split into its parts, on 1, 2, 4 devices.

  python experiments/benchmark.py --config=configs/toy.py \
      [--devices=1,2,4] [--steps=5] [--config.batch_per_device=2]

For each device count N a fresh process runs with N simulated host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, set before JAX starts;
on an accelerator the real devices are used and N must not exceed them). The
global batch is N x batch_per_device. Each process times, after one warm-up
call, over --steps calls, each jitted and waited for with block_until_ready:

  render     forward + backward of rendering one device's views
             (render.render_views, gradient of the mean colour; normals
             only where train_step.needs_normals says the step uses them),
  encode     forward + backward of prior.encode on those renders (resize for
             pixel priors, the VAE encoder for latent ones),
  unet       prior.predict_noise forward at the CFG batch 2 x views,
  rest       the full step (train_step.make_train_step) minus those three:
             sampling, SDS, regularisers, gradient pmean, optimiser,

and reports the step's compile time, the peak memory (the device's
peak_bytes_in_use where JAX reports it, else the process's peak RSS) and
steps/s.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags
from ml_collections import config_flags

from dreamfusion_jax import errors
from dreamfusion_jax import launch

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4'],
                             'Device counts to time, each in a subprocess.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed repeats after a warm-up.')
_WORKER = flags.DEFINE_integer(
    'worker', 0, 'Internal: time in this process with this many devices.')
flags.mark_flags_as_required(['config'])

_FORCE = '--xla_force_host_platform_device_count'


def _time(fn, *args, steps: int) -> float:
  """Mean seconds of fn(*args) over `steps` calls, after one warm-up."""
  import jax  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def _peak_memory():
  """(bytes, what): the device's peak use, else the process's peak RSS."""
  import resource  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak_bytes_in_use'
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host RSS'


def measure(config, num_devices: int, steps: int) -> dict:
  """Times the parts and the full step with `num_devices` devices."""
  # pylint: disable=g-import-not-at-top
  import time
  import jax
  import jax.numpy as jnp
  from dreamfusion_jax import cameras
  from dreamfusion_jax import priors
  from dreamfusion_jax import render
  from dreamfusion_jax import shading
  from dreamfusion_jax import train_step
  from dreamfusion_jax.nerf import field
  # pylint: enable=g-import-not-at-top
  if jax.device_count() != num_devices:
    raise errors.UserError(
        f'asked for {num_devices} devices, JAX sees {jax.device_count()}; '
        'use device counts up to the accelerators present.')
  batch = config.batch_per_device
  r = config.render
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  mesh = train_step.make_mesh()
  prior = priors.load_prior(config)
  state, base_key = train_step.initial_state(config.seed, model, tx, mesh,
                                             train_step.grid_resolution(config))
  # The parts run on one device: they are what each device does per step.
  params = jax.device_put(jax.device_get(state.params), jax.devices()[0])
  key = jax.random.key(0)

  def render_loss(params, key):
    k_cam, k_shade, k_render = jax.random.split(key, 3)
    cams = cameras.sample_cameras(k_cam, config.camera, batch)
    mode = shading.sample(k_shade, 0, config.shading, batch)
    out = render.render_views(
        model, params, cams, mode, key=jax.random.split(k_render, batch),
        resolution=r.resolution, num_samples=r.num_samples,
        scene_radius=r.scene_radius, normals=train_step.needs_normals(config))
    return jnp.mean(out['rgb']), out['rgb']

  render_grad = jax.jit(jax.grad(render_loss, has_aux=True))
  encode_grad = jax.jit(jax.grad(
      lambda images, prior: jnp.sum(prior.encode(prior.params, images))))
  predict_noise = jax.jit(
      lambda prior, z, t, emb: prior.predict_noise(prior.params, z, t, emb))

  _, images = render_grad(params, key)
  x = jax.jit(lambda prior, images: prior.encode(prior.params, images))(
      prior, images)
  z = jnp.concatenate([x, x])
  t = jnp.full((2 * batch,), prior.alphas_cumprod.shape[0] // 2, jnp.int32)
  cond = jnp.broadcast_to(prior.view_embeddings[0],
                          (batch,) + prior.view_embeddings.shape[1:])
  emb = jnp.concatenate(
      [cond, jnp.broadcast_to(prior.uncond_embedding, cond.shape)])
  parts = {
      'render': _time(render_grad, params, key, steps=steps),
      'encode': _time(encode_grad, images, prior, steps=steps),
      'unet': _time(predict_noise, prior, z, t, emb, steps=steps),
  }

  prior = train_step.replicate(prior, mesh)
  step_fn = train_step.make_train_step(config, model, tx, mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, prior, base_key).compile()
  compile_s = time.perf_counter() - t0
  state, _ = compiled(state, prior, base_key)  # Warm-up.
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, prior, base_key)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  peak, peak_kind = _peak_memory()
  return {
      'devices': num_devices, 'global_batch': num_devices * batch,
      'platform': jax.devices()[0].platform, 'step_s': step_s,
      **parts, 'rest': step_s - sum(parts.values()),
      'compile_s': compile_s, 'steps_per_s': 1.0 / step_s,
      'peak_bytes': int(peak), 'peak_kind': peak_kind,
  }


def _run_worker(num_devices: int) -> dict:
  """Runs this script with --worker=N in a process with N host devices."""
  env = dict(os.environ)
  xla = [f for f in env.get('XLA_FLAGS', '').split()
         if not f.startswith(_FORCE)]
  env['XLA_FLAGS'] = ' '.join(xla + [f'{_FORCE}={num_devices}'])
  args = [a for a in sys.argv[1:] if not a.startswith('--devices')]
  result, failure = launch.run_worker(__file__,
                                      [*args, f'--worker={num_devices}'], env)
  if result is None:
    raise errors.UserError(
        f'the benchmark with {num_devices} devices failed ({failure}); its '
        'log is above.')
  return result


def format_results(rows) -> str:
  ms = lambda s: f'{1e3 * s:9.1f}'
  lines = [
      f"{'devices':>7}{'batch':>6}{'step ms':>9}{'render':>9}{'encode':>9}"
      f"{'unet':>9}{'rest':>9}{'compile s':>10}{'steps/s':>9}"
      f"{'peak MiB':>10}"]
  for row in rows:
    lines.append(
        f"{row['devices']:>7}{row['global_batch']:>6}{ms(row['step_s'])}"
        f"{ms(row['render'])}{ms(row['encode'])}{ms(row['unet'])}"
        f"{ms(row['rest'])}{row['compile_s']:10.1f}"
        f"{row['steps_per_s']:9.2f}{row['peak_bytes'] / 2**20:10.0f}")
  first = rows[0]
  views = first['global_batch'] // first['devices']
  lines.append(
      f'render/encode/unet: one device\'s {views} views; rest = step - '
      f"parts; platform {first['platform']}; peak = {first['peak_kind']}.")
  return '\n'.join(lines)


def main(argv):
  del argv
  if _WORKER.value:
    result = measure(_CONFIG.value, _WORKER.value, _STEPS.value)
    launch.print_worker_result(result)
    return
  rows = []
  for n in _DEVICES.value:
    rows.append(_run_worker(int(n)))
    print(f'{n} device(s): {rows[-1]["steps_per_s"]:.2f} steps/s', flush=True)
  print(format_results(rows))


if __name__ == '__main__':
  launch.run(main)
