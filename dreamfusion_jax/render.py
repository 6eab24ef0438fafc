"""Differentiable volume rendering of the field (paper section 3.1).

Samples are stratified between each ray's entry into and exit from the
bounding sphere. The usual quadrature of the volume-rendering integral
(Max 1995; NeRF eq. 3) composites them:

  alpha_i = 1 - exp(-tau_i delta_i),   T_i = exp(-sum_{j<i} tau_j delta_j),
  w_i = alpha_i T_i,   C = sum_i w_i c_i + (1 - sum_i w_i) c_background.

Colours c_i come from `shading.shade` with normals n = -grad tau / |grad tau|,
obtained by differentiating the field with respect to the sample positions
(one vector-Jacobian product for all samples, since each sample's density
depends only on its own position).
"""

import functools
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import numerics
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.nerf import field as field_lib


def intersect_sphere(origins, directions, radius: float):
  """Entry and exit distances of unit-direction rays through a sphere at 0.

  Args:
    origins: [..., 3].
    directions: [..., 3] unit vectors.
    radius: sphere radius.

  Returns:
    near, far: [...], with 0 <= near <= far; rays that miss get near = far.
  """
  b = jnp.sum(origins * directions, axis=-1)
  c = jnp.sum(origins * origins, axis=-1) - radius ** 2
  disc = b * b - c
  half = numerics.safe_sqrt(jnp.maximum(disc, 0.0))
  hit = disc > 0
  far = jnp.where(hit, jnp.maximum(-b + half, 0.0), 0.0)
  near = jnp.where(hit, jnp.clip(-b - half, 0.0, far), 0.0)
  return near, far


def stratified_samples(key, near, far, num_samples: int):
  """Distances of stratified samples along rays.

  The interval [near, far] is cut into `num_samples` equal bins; each sample
  lies uniformly at random in its bin, or at the bin's centre when `key` is
  None (deterministic evaluation).

  Args:
    key: one PRNG key, None, or a [B] array of keys for rays of shape
      [B, ...] (one key per view, so a view's samples do not depend on the
      batch it is rendered in).
    near, far: [...] ray interval.
    num_samples: N.

  Returns:
    t: [..., N] sample distances; delta: [..., N] bin widths.
  """
  width = (far - near)[..., None] / num_samples
  shape = near.shape + (num_samples,)
  if key is None:
    u = jnp.full(shape, 0.5)
  elif key.ndim == 1:
    u = jax.vmap(lambda k: jax.random.uniform(k, shape[1:]))(key)
  else:
    u = jax.random.uniform(key, shape)
  t = near[..., None] + (jnp.arange(num_samples) + u) * width
  return t, jnp.broadcast_to(width, t.shape)


def compositing_weights(density, delta):
  """w_i = (1 - exp(-tau_i delta_i)) exp(-sum_{j<i} tau_j delta_j): [..., N]."""
  tau_delta = density * delta
  alpha = 1.0 - jnp.exp(-tau_delta)
  # Exclusive cumulative sum: the transmittance up to, not through, sample i.
  # Shifting (rather than subtracting tau_delta) stays exact when a sample's
  # optical depth dwarfs the rest.
  accumulated = jnp.cumsum(tau_delta, axis=-1)
  accumulated = jnp.concatenate(
      [jnp.zeros_like(accumulated[..., :1]), accumulated[..., :-1]], axis=-1)
  return alpha * jnp.exp(-accumulated)


def render_rays(model: field_lib.NeRF, params, origins, directions,
                light_position, shading: shading_lib.ShadingParams, *,
                key, num_samples: int, scene_radius: float,
                normals: bool = True) -> Dict[str, jax.Array]:
  """Renders rays through the field.

  Args:
    model: the NeRF module.
    params: its parameters.
    origins: [..., 3] ray origins.
    directions: [..., 3] unit ray directions.
    light_position: [..., 3] point-light position for each ray.
    shading: ShadingParams with fields of shape [...] (one mode per ray).
    key: PRNG key for stratified sampling (or [B] keys when the rays are
      [B, ...]), or None for bin centres.
    num_samples: samples per ray.
    scene_radius: radius of the bounding sphere.
    normals: compute normals (one extra backward pass through the field,
      about 2.5x the cost of the plain render). With False, the normals
      returned are zero, which is only right for albedo-only shading.

  Returns:
    rgb [..., 3], opacity [...], depth [...] (expected distance, background
    counted as 0), normals [..., 3] (composited), weights [..., N],
    sample_normals [..., N, 3], t [..., N] (sample distances), delta
    [..., N] (the widths of the samples' bins).
  """
  near, far = intersect_sphere(origins, directions, scene_radius)
  t, delta = stratified_samples(key, near, far, num_samples)
  points = origins[..., None, :] + t[..., None] * directions[..., None, :]

  def raw_fn(p):
    raw, albedo = model.apply(params, p,
                              method=field_lib.NeRF.raw_density_and_albedo)
    return raw, albedo

  if normals:
    raw, vjp_fn, albedo = jax.vjp(raw_fn, points, has_aux=True)
    (grad_raw,) = vjp_fn(jnp.ones_like(raw))
    # tau = exp(raw) is monotone in raw, so both gradients share a direction.
    sample_normals = -numerics.safe_normalize(grad_raw)
  else:
    raw, albedo = raw_fn(points)
    sample_normals = jnp.zeros_like(points)
  density = numerics.safe_exp(raw)

  per_sample = jax.tree.map(lambda a: jnp.asarray(a)[..., None], shading)
  colors = shading_lib.shade(albedo, sample_normals, points,
                             light_position[..., None, :], per_sample)
  weights = compositing_weights(density, delta)
  opacity = jnp.sum(weights, axis=-1)
  background = model.apply(params, directions, method=field_lib.NeRF.background)
  rgb = (jnp.sum(weights[..., None] * colors, axis=-2) +
         (1.0 - opacity[..., None]) * background)
  return {
      'rgb': rgb,
      'opacity': opacity,
      'depth': jnp.sum(weights * t, axis=-1),
      'normals': jnp.sum(weights[..., None] * sample_normals, axis=-2),
      'weights': weights,
      'sample_normals': sample_normals,
      't': t,
      'delta': delta,
  }


def render_views(model: field_lib.NeRF, params, cams: cameras_lib.Cameras,
                 shading: shading_lib.ShadingParams, *, key, resolution: int,
                 num_samples: int, scene_radius: float,
                 normals: bool = True) -> Dict[str, jax.Array]:
  """Renders a batch of cameras, one shading mode per camera.

  Args:
    cams: Cameras with leading shape [B].
    shading: ShadingParams with fields of shape [B].
    key: PRNG key for stratified sampling, [B] keys (one per view), or None.
    normals: as in `render_rays`.

  Returns:
    The outputs of `render_rays` with leading shape [B, H, W]; directions
    [B, H, W, 3] is added for the orientation loss.
  """
  origins, directions = cameras_lib.generate_rays(cams, resolution)
  per_ray = jax.tree.map(lambda a: jnp.asarray(a)[:, None, None], shading)
  light = jnp.broadcast_to(cams.light_position[:, None, None, :],
                           origins.shape)
  out = render_rays(model, params, origins, directions, light, per_ray,
                    key=key, num_samples=num_samples,
                    scene_radius=scene_radius, normals=normals)
  out['directions'] = directions
  return out


@functools.partial(
    jax.jit, static_argnames=('model', 'resolution', 'num_samples',
                              'scene_radius', 'chunk'))
def _render_image(model, params, cam, shading, resolution, num_samples,
                  scene_radius, chunk):
  origins, directions = cameras_lib.generate_rays(cam, resolution)
  num_rays = resolution * resolution
  num_chunks = -(-num_rays // chunk)
  pad = num_chunks * chunk - num_rays

  def flat(x):
    x = x.reshape(num_rays, -1)
    return jnp.pad(x, ((0, pad), (0, 0)), mode='edge').reshape(
        num_chunks, chunk, -1)

  light = jnp.broadcast_to(cam.light_position, origins.shape)

  def one_chunk(args):
    o, d, l = args
    out = render_rays(model, params, o, d, l, shading, key=None,
                      num_samples=num_samples, scene_radius=scene_radius)
    del out['weights'], out['sample_normals'], out['t'], out['delta']
    return out

  out = jax.lax.map(one_chunk, (flat(origins), flat(directions), flat(light)))
  return jax.tree.map(
      lambda x: x.reshape(num_chunks * chunk, *x.shape[2:])[:num_rays].reshape(
          resolution, resolution, *x.shape[2:]), out)


def render_image(model: field_lib.NeRF, params, cam: cameras_lib.Cameras,
                 resolution: int, render_config: ml_collections.ConfigDict,
                 shading: Optional[shading_lib.ShadingParams] = None
                 ) -> Dict[str, jax.Array]:
  """Deterministic full-image render of one camera, in chunks of rays.

  Memory is bounded by `render_config.chunk` rays at a time, so any
  resolution fits. Compiled once per (model, resolution) pair.

  Args:
    cam: one camera (fields without a batch dimension).
    resolution: output height and width.
    render_config: the `render` group (num_samples, scene_radius, chunk).
    shading: one scalar shading mode; albedo only when None.

  Returns:
    rgb [H, W, 3], opacity [H, W], depth [H, W], normals [H, W, 3].
  """
  if shading is None:
    shading = shading_lib.albedo_only()
  shading = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), shading)
  return _render_image(model, params, cam, shading, resolution,
                       render_config.num_samples,
                       float(render_config.scene_radius),
                       min(render_config.chunk, resolution * resolution))


def render_cameras(model: field_lib.NeRF, params, cams: cameras_lib.Cameras,
                   resolution: int, render_config: ml_collections.ConfigDict,
                   shading: Optional[shading_lib.ShadingParams] = None
                   ) -> Dict[str, np.ndarray]:
  """`render_image` of each camera of a batch, stacked on the host.

  One camera at a time, so memory holds one image's rays; previews,
  turntables and evaluation renders all go through here.

  Args:
    cams: Cameras with leading shape [V] (e.g. `cameras.orbit_cameras`).
    resolution, render_config, shading: as in `render_image`.

  Returns:
    numpy rgb [V, H, W, 3], opacity [V, H, W], depth [V, H, W] and normals
    [V, H, W, 3].
  """
  frames = []
  for i in range(cams.azimuth.shape[0]):
    cam = jax.tree.map(lambda a, i=i: a[i], cams)
    frames.append(jax.device_get(render_image(model, params, cam, resolution,
                                              render_config, shading)))
  return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def validate(render_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid render group."""
  for name in ('resolution', 'num_samples', 'chunk'):
    value = render_config[name]
    if not isinstance(value, int) or value <= 0:
      raise errors.UserError(
          f'render.{name} = {value!r} must be a positive integer; set e.g. '
          f'--config.render.{name}=64.')
  if render_config.scene_radius <= 0:
    raise errors.UserError(
        f'render.scene_radius = {render_config.scene_radius} must be '
        'positive; the paper uses 1.4.')
