"""Cameras and point lights: sampling (paper appendix A.2), orbits and rays.

Conventions (DESIGN.md section 4): world is right-handed with z up; azimuth 0
puts the camera on +x looking at the origin and azimuth grows towards +y;
elevation is the angle above the xy-plane. Angles are in degrees.

A camera is a pinhole with its camera-to-world rotation stored as columns
(right, up, back): it looks along -back, the OpenGL convention. The focal
length is kept in units of the image width, so one camera renders at any
resolution.
"""

from typing import Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections

from dreamfusion_jax import errors
from dreamfusion_jax import numerics

_HIGHEST = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class Cameras:
  """A batch of pinhole cameras with one point light each.

  Attributes:
    position: [..., 3] camera centres in world space.
    rotation: [..., 3, 3] camera-to-world rotation, columns (right, up, back).
    focal: [...] focal length in units of the image width.
    azimuth: [...] nominal azimuth in degrees in [0, 360).
    elevation: [...] nominal elevation in degrees.
    light_position: [..., 3] point-light positions in world space.
  """

  position: jax.Array
  rotation: jax.Array
  focal: jax.Array
  azimuth: jax.Array
  elevation: jax.Array
  light_position: jax.Array


def spherical_to_cartesian(azimuth_deg, elevation_deg, distance):
  """Point at (azimuth, elevation, distance): [...] x3 -> [..., 3]."""
  az = jnp.deg2rad(azimuth_deg)
  el = jnp.deg2rad(elevation_deg)
  return distance[..., None] * jnp.stack(
      [jnp.cos(el) * jnp.cos(az), jnp.cos(el) * jnp.sin(az), jnp.sin(el)],
      axis=-1)


def look_at(eye, target, up, fallback_right=None):
  """Camera-to-world rotation of a camera at `eye` looking at `target`.

  Args:
    eye: [..., 3] camera centre.
    target: [..., 3] point the camera looks at.
    up: [..., 3] approximate up direction.
    fallback_right: [..., 3] right vector used where `up` is (nearly)
      parallel to the viewing direction, e.g. straight overhead.

  Returns:
    [..., 3, 3] rotation with columns (right, up, back).
  """
  forward = numerics.safe_normalize(target - eye)
  right = jnp.cross(forward, up)
  norm = jnp.linalg.norm(right, axis=-1, keepdims=True)
  if fallback_right is not None:
    right = jnp.where(norm < 1e-6, fallback_right, right)
  right = numerics.safe_normalize(right)
  true_up = jnp.cross(right, forward)
  return jnp.stack([right, true_up, -forward], axis=-1)


def _uniform(key, shape, bounds):
  lo, hi = bounds
  return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def sample_elevation(key, shape, elevation_range, uniform_area_prob):
  """Elevations (deg): a mix of uniform-in-angle and uniform-in-area draws.

  Uniform in area on the sphere means sin(elevation) is uniform; uniform in
  angle over-samples the pole, which the paper found helpful (A.2).
  """
  k_mix, k_angle, k_area = jax.random.split(key, 3)
  lo, hi = elevation_range
  by_angle = _uniform(k_angle, shape, (lo, hi))
  s = _uniform(k_area, shape,
               (jnp.sin(jnp.deg2rad(lo)), jnp.sin(jnp.deg2rad(hi))))
  by_area = jnp.rad2deg(jnp.arcsin(jnp.clip(s, -1.0, 1.0)))
  use_area = jax.random.uniform(k_mix, shape) < uniform_area_prob
  return jnp.where(use_area, by_area, by_angle)


def sample_cameras(key, camera_config: ml_collections.ConfigDict,
                   num: int) -> Cameras:
  """Random training cameras and lights (paper appendix A.2).

  Args:
    key: PRNG key.
    camera_config: the `camera` group of the config.
    num: number of cameras.

  Returns:
    Cameras with leading shape [num].
  """
  c = camera_config
  keys = jax.random.split(key, 9)
  shape = (num,)
  elevation = sample_elevation(keys[0], shape, c.elevation_range,
                               c.uniform_area_prob)
  azimuth = _uniform(keys[1], shape, c.azimuth_range) % 360.0
  distance = _uniform(keys[2], shape, c.distance_range)
  focal = _uniform(keys[3], shape, c.focal_range)

  nominal = spherical_to_cartesian(azimuth, elevation, distance)
  position = nominal + c.position_jitter * jax.random.uniform(
      keys[4], (num, 3), minval=-1.0, maxval=1.0)
  target = c.target_jitter * jax.random.normal(keys[5], (num, 3))
  up = jnp.array([0.0, 0.0, 1.0]) + c.up_jitter * jax.random.normal(
      keys[6], (num, 3))
  rotation = look_at(position, target, up, _azimuth_right(azimuth))

  light_dir = numerics.safe_normalize(
      position + c.light_direction_std * jax.random.normal(keys[7], (num, 3)))
  light_distance = _uniform(keys[8], shape, c.light_distance_range)
  return Cameras(position=position, rotation=rotation, focal=focal,
                 azimuth=azimuth, elevation=elevation,
                 light_position=light_dir * light_distance[:, None])


def _azimuth_right(azimuth_deg):
  """Right vector of an upright camera at this azimuth: [...] -> [..., 3]."""
  az = jnp.deg2rad(azimuth_deg)
  return jnp.stack([-jnp.sin(az), jnp.cos(az), jnp.zeros_like(az)], axis=-1)


def orbit_cameras(num: int, elevation: float, distance: float,
                  focal: float, azimuth_start: float = 0.0) -> Cameras:
  """`num` cameras evenly spaced in azimuth, looking at the origin.

  The light sits at the camera (a headlight), so lit renders are well exposed.
  """
  azimuth = (azimuth_start + jnp.arange(num) * 360.0 / num) % 360.0
  return fixed_cameras(azimuth, jnp.full((num,), elevation),
                       jnp.full((num,), distance), jnp.full((num,), focal))


def fixed_cameras(azimuth, elevation, distance, focal) -> Cameras:
  """Un-jittered cameras at the given angles (deg), looking at the origin."""
  azimuth = jnp.asarray(azimuth, jnp.float32)
  elevation = jnp.asarray(elevation, jnp.float32)
  distance = jnp.asarray(distance, jnp.float32)
  position = spherical_to_cartesian(azimuth, elevation, distance)
  up = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), position.shape)
  rotation = look_at(position, jnp.zeros_like(position), up,
                     _azimuth_right(azimuth))
  return Cameras(position=position, rotation=rotation,
                 focal=jnp.asarray(focal, jnp.float32), azimuth=azimuth % 360.0,
                 elevation=elevation, light_position=position)


def intrinsics(focal, resolution: int):
  """Pinhole matrix K for square images: [...] -> [..., 3, 3] (pixels)."""
  f = focal * resolution
  c = resolution / 2.0
  zeros = jnp.zeros_like(f)
  ones = jnp.ones_like(f)
  return jnp.stack([
      jnp.stack([f, zeros, zeros + c], -1),
      jnp.stack([zeros, f, zeros + c], -1),
      jnp.stack([zeros, zeros, ones], -1)], -2)


def generate_rays(cameras: Cameras,
                  resolution: int) -> Tuple[jax.Array, jax.Array]:
  """Rays through the pixel centres of every camera.

  Pixel (row i, column j) has centre (j + 0.5, i + 0.5); rows go down the
  image, so the camera's up vector points to row 0.

  Args:
    cameras: Cameras with leading shape [...].
    resolution: image height and width in pixels.

  Returns:
    origins [..., H, W, 3] and unit directions [..., H, W, 3].
  """
  pix = (jnp.arange(resolution, dtype=jnp.float32) + 0.5 - resolution / 2.0)
  f = (cameras.focal * resolution)[..., None, None]
  x = jnp.broadcast_to(pix[None, :], (resolution, resolution)) / f
  y = -jnp.broadcast_to(pix[:, None], (resolution, resolution)) / f
  dirs_cam = jnp.stack([x, y, -jnp.ones_like(x)], axis=-1)  # [..., H, W, 3]
  dirs = jnp.einsum('...ij,...hwj->...hwi', cameras.rotation, dirs_cam,
                    precision=_HIGHEST)
  dirs = numerics.safe_normalize(dirs)
  origins = jnp.broadcast_to(cameras.position[..., None, None, :], dirs.shape)
  return origins, dirs


def project(cameras: Cameras, points, resolution: int):
  """World points [..., P, 3] to pixels [..., P, 2] (x right, y down).

  The inverse of `generate_rays`: the centre of pixel (i, j) maps to
  (j + 0.5, i + 0.5).
  """
  rel = points - cameras.position[..., None, :]
  cam = jnp.einsum('...ji,...pj->...pi', cameras.rotation, rel,
                   precision=_HIGHEST)
  depth = -cam[..., 2]
  f = (cameras.focal * resolution)[..., None]
  u = f * cam[..., 0] / depth + resolution / 2.0
  v = -f * cam[..., 1] / depth + resolution / 2.0
  return jnp.stack([u, v], axis=-1)


def validate(camera_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid camera group."""
  c = camera_config
  for name in ('elevation_range', 'azimuth_range', 'distance_range',
               'focal_range', 'light_distance_range'):
    value = c[name]
    # min == max is a fixed value (e.g. one camera distance).
    if len(value) != 2 or not value[0] <= value[1]:
      raise errors.UserError(
          f'camera.{name} = {tuple(value)} is not a (min, max) pair with '
          f'min <= max; set it to e.g. --config.camera.{name}="(lo, hi)".')
  lo, hi = c.elevation_range
  if lo < -90.0 or hi > 90.0:
    raise errors.UserError(
        f'camera.elevation_range = {(lo, hi)} leaves [-90, 90] degrees; '
        'clip it to that interval.')
  if c.distance_range[0] <= 0 or c.focal_range[0] <= 0:
    raise errors.UserError(
        'camera.distance_range and camera.focal_range must be positive; '
        f'got {tuple(c.distance_range)} and {tuple(c.focal_range)}.')
  if not 0.0 <= c.uniform_area_prob <= 1.0:
    raise errors.UserError(
        f'camera.uniform_area_prob = {c.uniform_area_prob} is not a '
        'probability; use a value in [0, 1].')
  for name in ('position_jitter', 'target_jitter', 'up_jitter',
               'light_direction_std'):
    if c[name] < 0:
      raise errors.UserError(
          f'camera.{name} = {c[name]} is negative; use >= 0.')
