r"""Render throughput: where a render's time goes, old path against new.

  python experiments/benchmark_render.py [--resolution=64] [--repeats=3] \
      [--fields=mlp,hashgrid] [--occupancy_samples=16] [--field_chunk=8192]

For each field, times value_and_grad of the mean colour of one lit
resolution^2 render of configs/default.py (the paper's cameras), best of
--repeats, in these variants, all in one run so that their ratios hold on
any machine:

  old         64 stratified samples per ray, autodiff normals, one field
              evaluation over all samples (the previous training path)
  +chunk      the same, the field evaluated in chunks of --field_chunk
              points, rematerialised in the backward pass
  occupancy   --occupancy_samples samples per ray in the occupied cells of
              a grid holding a sphere of radius 0.5 (an object's size)
  +central / +forward   occupancy with finite-difference normals

and a breakdown of the old path by stage (separately jitted programs):
samples (rays and sample positions), field forward, field forward with
normals, the whole render forward, and forward + backward.

GFLOP counts the field evaluations a variant does: XLA's cost analysis of
the same computation without chunks (a loop's cost analysis counts its body
once). The matmul reference is an MLP-shaped f32 product, 32768 x 128 x 128,
timed in the same run.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from configs import default
from dreamfusion_jax import cameras
from dreamfusion_jax import occupancy
from dreamfusion_jax import render
from dreamfusion_jax import shading
from dreamfusion_jax.nerf import field

_RESOLUTION = flags.DEFINE_integer('resolution', 64, 'Render size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions.')
_FIELDS = flags.DEFINE_list('fields', ['mlp', 'hashgrid'], 'Fields to time.')
_OCC_SAMPLES = flags.DEFINE_integer('occupancy_samples', 16,
                                    'Samples per ray with the grid.')
_CHUNK = flags.DEFINE_integer('field_chunk', 8192,
                              'Points per field evaluation (mlp).')
_BREAKDOWN = flags.DEFINE_bool('breakdown', True, 'Time the stages.')


def _best(fn, *args, repeats):
  """(best seconds, compile seconds) of a jitted fn."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return min(times), compile_s


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, list):  # Older jax returns one dict per device.
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def matmul_gflops(repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (32768, 128))
  b = jax.random.normal(jax.random.key(1), (128, 128))
  t, _ = _best(lambda a, b: a @ b, a, b, repeats=max(repeats, 10))
  return 2 * 32768 * 128 * 128 / t / 1e9


def sphere_mask(resolution: int, bound: float, radius: float = 0.5):
  """The occupancy mask of a ball: its cells and their neighbours."""
  centers = occupancy.cell_centers(resolution, bound)
  density = jnp.where(jnp.linalg.norm(centers, axis=-1) < radius, 10.0, 0.0)
  return occupancy.occupied(density, 1.0)


def variants(config):
  r = config.render
  mask = sphere_mask(r.occupancy_resolution, r.scene_radius)
  base = dict(num_samples=r.num_samples, scene_radius=r.scene_radius,
              normals=True)
  occ = dict(base, num_samples=_OCC_SAMPLES.value, occupancy=mask,
             num_candidates=r.occupancy_candidates)
  chunk = _CHUNK.value if config.nerf.field == 'mlp' else 0
  return {
      'old': (base, r.num_samples),
      '+chunk': (dict(base, field_chunk=chunk), r.num_samples),
      'occupancy': (dict(occ, field_chunk=chunk), _OCC_SAMPLES.value),
      '+central': (dict(occ, field_chunk=chunk, normal_mode='central'),
                   7 * _OCC_SAMPLES.value),
      '+forward': (dict(occ, field_chunk=chunk, normal_mode='forward'),
                   4 * _OCC_SAMPLES.value),
  }


def benchmark(config, field_kind, resolution, repeats, reference):
  config.nerf.field = field_kind
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  cams = cameras.sample_cameras(jax.random.key(1), config.camera, 1)
  mode = shading.lambertian((1,))
  key = jax.random.key(2)

  def mean_rgb(options):
    def loss(params, key):
      out = render.render_views(model, params, cams, mode, key=key,
                                resolution=resolution, **options)
      return jnp.mean(out['rgb'])
    return loss

  def loss_fn(options):
    return jax.value_and_grad(mean_rgb(options))

  print(f'\n{field_kind}: {sum(x.size for x in jax.tree.leaves(params)):,} '
        'params')
  print(f'{"variant":10s} {"evals/ray":>9s} {"ms":>8s} {"x old":>6s} '
        f'{"GFLOP":>7s} {"GFLOP/s":>8s} {"% matmul":>9s} {"compile s":>9s}')
  old_ms = None
  for name, (options, evals) in variants(config).items():
    t, compile_s = _best(loss_fn(options), params, key, repeats=repeats)
    flops = _flops(loss_fn(dict(options, field_chunk=0)), params, key)
    old_ms = old_ms or t * 1e3
    rate = flops / t / 1e9
    print(f'{name:10s} {evals:9d} {t * 1e3:8.0f} {old_ms / (t * 1e3):6.2f} '
          f'{flops / 1e9:7.1f} {rate:8.1f} {100 * rate / reference:8.0f}% '
          f'{compile_s:9.1f}', flush=True)
  if not _BREAKDOWN.value:
    return

  r = config.render
  origins, directions = cameras.generate_rays(cams, resolution)
  near, far = render.intersect_sphere(origins, directions, r.scene_radius)

  def points(key):
    t, _ = render.stratified_samples(key, near, far, r.num_samples)
    return origins[..., None, :] + t[..., None] * directions[..., None, :]

  pts = jax.jit(points)(key)
  stages = {
      'samples': (points, key),
      'field forward': (lambda p: render.field_outputs(
          model, params, p, normals=False)[:2], pts),
      'field + normals': (lambda p: render.field_outputs(
          model, params, p, normals=True), pts),
      'render forward': (mean_rgb(variants(config)['old'][0]), params, key),
      'forward+backward': (loss_fn(variants(config)['old'][0]), params, key),
  }
  print('old path by stage:', end='')
  for name, (fn, *args) in stages.items():
    t, _ = _best(fn, *args, repeats=repeats)
    print(f'  {name} {t * 1e3:.0f} ms', end='', flush=True)
  print()


def main(argv):
  del argv
  config = default.get_config()
  reference = matmul_gflops(_REPEATS.value)
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} '
        f'({jax.default_backend()}); {_RESOLUTION.value}x{_RESOLUTION.value} '
        f'lit render, forward+backward; matmul reference {reference:.0f} '
        'GFLOP/s')
  for kind in _FIELDS.value:
    benchmark(config, kind, _RESOLUTION.value, _REPEATS.value, reference)


if __name__ == '__main__':
  app.run(main)
