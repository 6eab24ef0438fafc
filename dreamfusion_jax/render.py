"""Differentiable volume rendering of the field (paper section 3.1).

Samples are stratified between each ray's entry into and exit from the
bounding sphere, or placed in the occupied cells of an occupancy grid only
(`occupancy.py`). The usual quadrature of the volume-rendering integral
(Max 1995; NeRF eq. 3) composites them:

  alpha_i = 1 - exp(-tau_i delta_i),   T_i = exp(-sum_{j<i} tau_j delta_j),
  w_i = alpha_i T_i,   C = sum_i w_i c_i + (1 - sum_i w_i) c_background.

Colours c_i come from `shading.shade` with normals n = -grad tau / |grad tau|,
obtained by differentiating the field with respect to the sample positions
(one vector-Jacobian product for all samples, since each sample's density
depends only on its own position) or by finite differences
(`field_outputs`).
"""

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import numerics
from dreamfusion_jax import occupancy as occupancy_lib
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.nerf import field as field_lib

# Values of render.sampler and render.normals.
SAMPLERS = ('stratified', 'occupancy')
NORMAL_MODES = ('autodiff', 'central', 'forward')


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
  u = numerics.stratum_offsets(key, near.shape + (num_samples,))
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


def field_outputs(model: field_lib.NeRF, params, points, *, normals: bool,
                  normal_mode: str = 'autodiff', normal_eps: float = 1e-2,
                  chunk: int = 0):
  """The field at sample points, with the gradient of its raw density.

  Normals are n = -grad tau / |grad tau|; tau (exp or softplus of raw) is
  monotone in raw, so grad raw has the same direction. Ways to get it (`normal_mode`):
    'autodiff'  one vector-Jacobian product through the field (each
                sample's density depends only on its own position); the
                training backward is then second order through the field.
    'central'   central differences, (raw(x + h e_i) - raw(x - h e_i)) / 2h:
                six more evaluations, first-order backward.
    'forward'   forward differences, (raw(x + h e_i) - raw(x)) / h: three
                more evaluations, first order in h.

  Args:
    points: [..., 3].
    normals: whether to compute the gradient (zeros otherwise).
    normal_mode, normal_eps: as above; h = normal_eps.
    chunk: points per field evaluation; 0 evaluates all at once. Chunks
      are rematerialised (`jax.checkpoint`) in the backward pass, so each
      chunk's activations stay in cache instead of streaming through memory.

  Returns:
    raw [...], albedo [..., 3], grad_raw [..., 3].
  """
  def raw_fn(p):
    return model.apply(params, p, method=field_lib.NeRF.raw_density_and_albedo)

  def evaluate(p):  # [..., 3] -> raw [...], albedo [..., 3], grad [..., 3]
    if not normals:
      raw, albedo = raw_fn(p)
      return raw, albedo, jnp.zeros_like(p)
    if normal_mode == 'autodiff':
      raw, vjp_fn, albedo = jax.vjp(raw_fn, p, has_aux=True)
      (grad_raw,) = vjp_fn(jnp.ones_like(raw))
      return raw, albedo, grad_raw
    h = normal_eps * jnp.eye(3, dtype=p.dtype).reshape(
        (3,) + (1,) * (p.ndim - 1) + (3,))
    if normal_mode == 'central':
      shifted = jnp.concatenate([p[None], p + h, p - h])  # [7, ..., 3]
    else:
      shifted = jnp.concatenate([p[None], p + h])  # [4, ..., 3]
    raw, albedo = raw_fn(shifted)
    if normal_mode == 'central':
      grad_raw = (raw[1:4] - raw[4:7]) / (2.0 * normal_eps)
    else:
      grad_raw = (raw[1:4] - raw[0:1]) / normal_eps
    return raw[0], albedo[0], jnp.moveaxis(grad_raw, 0, -1)

  if not chunk or points[..., 0].size <= chunk:
    return evaluate(points)
  return numerics.map_in_chunks(jax.checkpoint(evaluate), points, chunk)


def render_rays(model: field_lib.NeRF, params, origins, directions,
                light_position, shading: shading_lib.ShadingParams, *,
                key, num_samples: int, scene_radius: float,
                normals: bool = True, normal_mode: str = 'autodiff',
                normal_eps: float = 1e-2, field_chunk: int = 0,
                occupancy: Optional[jax.Array] = None,
                num_candidates: int = 128) -> Dict[str, jax.Array]:
  """Renders rays through the field.

  Args:
    model: the NeRF module.
    params: its parameters.
    origins: [..., 3] ray origins.
    directions: [..., 3] unit ray directions.
    light_position: [..., 3] point-light position for each ray.
    shading: ShadingParams with fields of shape [...] (one mode per ray).
    key: PRNG key for the samples' jitter (or [B] keys when the rays are
      [B, ...]), or None for deterministic samples.
    num_samples: samples per ray.
    scene_radius: radius of the bounding sphere.
    normals: compute normals (`field_outputs`; autodiff normals cost about
      2.5x the plain render). With False, the normals returned are zero,
      which is only right for albedo-only shading.
    normal_mode, normal_eps, field_chunk: see `field_outputs`.
    occupancy: None for stratified samples across the whole bounding
      sphere; or an [R, R, R] bool occupancy mask over [-scene_radius,
      scene_radius]^3 (`occupancy.occupied`), and the samples fall in its
      occupied cells only (`occupancy.sample_along_rays`).
    num_candidates: bins per ray in which the occupancy is looked up.

  Returns:
    rgb [..., 3], opacity [...], depth [...] (expected distance, background
    counted as 0), normals [..., 3] (composited), n_dot_l [...] (the
    composited Lambert term sum_i w_i max(0, n_i . l), from which any
    textureless shading follows: `textureless_rgb`), background [..., 3]
    (the background colour behind each ray), weights [..., N],
    sample_normals [..., N, 3], t [..., N] (sample distances), delta
    [..., N] (the samples' quadrature widths).
  """
  near, far = intersect_sphere(origins, directions, scene_radius)
  if occupancy is None:
    t, delta = stratified_samples(key, near, far, num_samples)
  else:
    t, delta = occupancy_lib.sample_along_rays(
        key, occupancy, origins, directions, near, far, num_samples,
        num_candidates, scene_radius)
  points = origins[..., None, :] + t[..., None] * directions[..., None, :]
  raw, albedo, grad_raw = field_outputs(
      model, params, points, normals=normals, normal_mode=normal_mode,
      normal_eps=normal_eps, chunk=field_chunk)
  sample_normals = (-numerics.safe_normalize(grad_raw) if normals
                    else grad_raw)
  density = model.activate(raw)

  per_sample = jax.tree.map(lambda a: jnp.asarray(a)[..., None], shading)
  colors = shading_lib.shade(albedo, sample_normals, points,
                             light_position[..., None, :], per_sample)
  weights = compositing_weights(density, delta)
  opacity = jnp.sum(weights, axis=-1)
  background = model.apply(params, directions, method=field_lib.NeRF.background)
  rgb = (jnp.sum(weights[..., None] * colors, axis=-2) +
         (1.0 - opacity[..., None]) * background)
  n_dot_l = shading_lib.lambert(sample_normals, points,
                                light_position[..., None, :])
  return {
      'rgb': rgb,
      'opacity': opacity,
      'depth': jnp.sum(weights * t, axis=-1),
      'normals': jnp.sum(weights[..., None] * sample_normals, axis=-2),
      'n_dot_l': jnp.sum(weights * n_dot_l, axis=-1),
      'background': background,
      'weights': weights,
      'sample_normals': sample_normals,
      't': t,
      'delta': delta,
  }


def render_views(model: field_lib.NeRF, params, cams: cameras_lib.Cameras,
                 shading: shading_lib.ShadingParams, *, key, resolution: int,
                 **ray_options) -> Dict[str, jax.Array]:
  """Renders a batch of cameras, one shading mode per camera.

  Args:
    cams: Cameras with leading shape [B].
    shading: ShadingParams with fields of shape [B].
    key: PRNG key for the samples, [B] keys (one per view), or None.
    resolution: image height and width.
    **ray_options: the keyword arguments of `render_rays` (num_samples,
      scene_radius, normals, occupancy, ...).

  Returns:
    The outputs of `render_rays` with leading shape [B, H, W]; directions
    [B, H, W, 3] is added for the orientation loss.
  """
  origins, directions = cameras_lib.generate_rays(cams, resolution)
  per_ray = jax.tree.map(lambda a: jnp.asarray(a)[:, None, None], shading)
  light = jnp.broadcast_to(cams.light_position[:, None, None, :],
                           origins.shape)
  out = render_rays(model, params, origins, directions, light, per_ray,
                    key=key, **ray_options)
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
    rgb [H, W, 3], opacity [H, W], depth [H, W], normals [H, W, 3],
    n_dot_l [H, W], background [H, W, 3].
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
                   shading: Optional[shading_lib.ShadingParams] = None,
                   progress: Optional[Callable[[int, int], None]] = None
                   ) -> Dict[str, np.ndarray]:
  """`render_image` of each camera of a batch, stacked on the host.

  One camera at a time, so memory holds one image's rays; previews,
  turntables and evaluation renders all go through here.

  Args:
    cams: Cameras with leading shape [V] (e.g. `cameras.orbit_cameras`).
    resolution, render_config, shading: as in `render_image`.
    progress: called as progress(done, V) after each frame, or None.

  Returns:
    The outputs of `render_image` as numpy arrays with leading shape [V]:
    rgb [V, H, W, 3], opacity [V, H, W], depth [V, H, W], normals
    [V, H, W, 3], n_dot_l [V, H, W], background [V, H, W, 3].
  """
  frames = []
  num = cams.azimuth.shape[0]
  for i in range(num):
    cam = jax.tree.map(lambda a, i=i: a[i], cams)
    frames.append(jax.device_get(render_image(model, params, cam, resolution,
                                              render_config, shading)))
    if progress is not None:
      progress(i + 1, num)
  return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def textureless_rgb(out: Dict[str, np.ndarray], ambient: float,
                    diffuse: float) -> np.ndarray:
  """The textureless render (rho = 1) of the lights of a finished render.

  Shading is per sample, c_i = ambient + diffuse max(0, n_i . l), and
  compositing is linear, so sum_i w_i c_i = ambient * opacity + diffuse *
  n_dot_l: one pass (in any shading mode, e.g. albedo only) gives the
  textureless image exactly, without rendering the field again.

  Args:
    out: outputs of `render_rays` / `render_cameras` (opacity [...],
      n_dot_l [...], background [..., 3]).
    ambient, diffuse: the Lambertian shading's light levels.

  Returns:
    rgb [..., 3].
  """
  shaded = ambient * out['opacity'] + diffuse * out['n_dot_l']
  return (shaded[..., None] +
          (1.0 - out['opacity'][..., None]) * out['background'])


def validate(render_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid render group."""
  r = render_config
  for name in ('resolution', 'num_samples', 'chunk', 'occupancy_samples',
               'occupancy_resolution', 'occupancy_update_every',
               'occupancy_candidates'):
    value = r[name]
    if not isinstance(value, int) or value <= 0:
      raise errors.UserError(
          f'render.{name} = {value!r} must be a positive integer; set e.g. '
          f'--config.render.{name}=64.')
  if r.scene_radius <= 0:
    raise errors.UserError(
        f'render.scene_radius = {r.scene_radius} must be positive; the paper '
        'uses 1.4.')
  if r.sampler not in SAMPLERS:
    raise errors.UserError(
        f"render.sampler = '{r.sampler}' is unknown; use one of "
        f"{', '.join(repr(x) for x in SAMPLERS)}.")
  if r.normals not in NORMAL_MODES:
    raise errors.UserError(
        f"render.normals = '{r.normals}' is unknown; use one of "
        f"{', '.join(repr(x) for x in NORMAL_MODES)}.")
  if r.normal_eps <= 0 or r.occupancy_threshold < 0:
    raise errors.UserError(
        f'render.normal_eps = {r.normal_eps} must be positive and '
        f'render.occupancy_threshold = {r.occupancy_threshold} not negative.')
  if not 0.0 <= r.occupancy_decay <= 1.0:
    raise errors.UserError(
        f'render.occupancy_decay = {r.occupancy_decay} must lie in [0, 1]; '
        'Instant-NGP uses 0.95.')
  if not isinstance(r.field_chunk, int) or r.field_chunk < 0:
    raise errors.UserError(
        f'render.field_chunk = {r.field_chunk!r} must be 0 (no chunks) or a '
        'positive integer, e.g. 8192.')
