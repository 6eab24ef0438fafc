r"""Render throughput: forward + backward of a 64x64 render, per field.

  python experiments/benchmark_render.py [--resolution=64] [--repeats=5]

Prints, for each field ('mlp', 'hashgrid'), the compile time and the
samples per second of value_and_grad of a full render (normals by autodiff
included, so the backward is second order through the field), on whatever
device JAX picks.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from configs import default
from dreamfusion_jax import cameras
from dreamfusion_jax import render
from dreamfusion_jax import shading
from dreamfusion_jax.nerf import field

_RESOLUTION = flags.DEFINE_integer('resolution', 64, 'Render size.')
_SAMPLES = flags.DEFINE_integer('num_samples', None,
                                'Samples per ray (default: config).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repetitions.')
_FIELDS = flags.DEFINE_list('fields', ['mlp', 'hashgrid'], 'Fields to time.')


def benchmark(config, field_kind, resolution, num_samples, repeats):
  config.nerf.field = field_kind
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  cams = cameras.sample_cameras(jax.random.key(1), config.camera, 1)
  mode = shading.lambertian((1,))

  @jax.jit
  def step(params, key):
    def loss(params):
      out = render.render_views(model, params, cams, mode, key=key,
                                resolution=resolution,
                                num_samples=num_samples,
                                scene_radius=config.render.scene_radius)
      return jnp.mean(out['rgb'])
    return jax.value_and_grad(loss)(params)

  t0 = time.perf_counter()
  jax.block_until_ready(step(params, jax.random.key(2)))
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, jax.random.key(3 + i)))
    times.append(time.perf_counter() - t0)
  best = min(times)
  samples = resolution * resolution * num_samples
  num_params = sum(x.size for x in jax.tree.leaves(params))
  return compile_s, best, samples / best, num_params


def main(argv):
  del argv
  config = default.get_config()
  num_samples = _SAMPLES.value or config.render.num_samples
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} '
        f'({jax.default_backend()}), {_RESOLUTION.value}x{_RESOLUTION.value}, '
        f'{num_samples} samples/ray, forward+backward with normals')
  print(f'{"field":10s} {"params":>10s} {"compile s":>10s} {"step ms":>9s} '
        f'{"Msamples/s":>11s}')
  for kind in _FIELDS.value:
    compile_s, best, rate, n = benchmark(config, kind, _RESOLUTION.value,
                                         num_samples, _REPEATS.value)
    print(f'{kind:10s} {n:10d} {compile_s:10.1f} {best * 1e3:9.1f} '
          f'{rate / 1e6:11.3f}')


if __name__ == '__main__':
  app.run(main)
