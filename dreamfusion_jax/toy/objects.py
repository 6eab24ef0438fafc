"""The toy world's objects: exact signed distance functions with albedo.

Five prompts name five objects (DESIGN.md section 7). World frame: z up, the
front of an object faces +x, everything lies inside the unit sphere.

  a red cube      axis-aligned cube, centre 0, half-extent 0.4
  a blue sphere   sphere, centre 0, radius 0.5
  a green cone    apex (0, 0, 0.45), base disc of radius 0.45 at z = -0.45
  a yellow torus  in the xy-plane, major radius 0.45, minor radius 0.15
  a snowman       body: sphere at (0, 0, -0.2), r 0.35; head: sphere at
                  (0, 0, 0.3), r 0.22 (both white); nose: an orange cone
                  along +x, base centre (0.15, 0, 0.3), base radius 0.1,
                  apex (0.5, 0, 0.3). Its base disc lies inside the head, so
                  nose and head join without a gap; the 0.3 that sticks out
                  is about 3 x 5 pixels at 32 x 32, large enough for the
                  prior's images to show it (the first nose, 0.06 x 0.2, was
                  about 2 pixels wide and no run ever grew it).

Every primitive's SDF is exact (the Euclidean distance to the surface, negative
inside); the snowman is the union min(body, head, nose), exact outside and a
lower bound of the distance inside, which is all sphere tracing needs. Albedo
is linear RGB; the snowman takes the colour of the part nearest to the point.

All functions are vectorised over any leading shape and jittable. An object
is named by its prompt (a Python string, resolved at trace time) or by its
index into PROMPTS (an int that may be traced: one compiled function then
serves every object).
"""

from typing import Callable, Dict, Tuple, Union

import jax
import jax.numpy as jnp

from dreamfusion_jax import errors

PROMPTS = ('a red cube', 'a blue sphere', 'a green cone', 'a yellow torus',
           'a snowman')

RED = (0.8, 0.1, 0.1)
BLUE = (0.1, 0.2, 0.8)
GREEN = (0.1, 0.7, 0.2)
YELLOW = (0.9, 0.8, 0.1)
WHITE = (0.9, 0.9, 0.9)
ORANGE = (0.95, 0.5, 0.1)

# A prompt, or its index into PROMPTS (an int scalar, possibly traced).
Object = Union[str, int, jax.Array]

# Snowman geometry (also used by toy.metrics for the Janus check).
BODY_CENTER = (0.0, 0.0, -0.2)
BODY_RADIUS = 0.35
HEAD_CENTER = (0.0, 0.0, 0.3)
HEAD_RADIUS = 0.22
# The nose: a cone along +x from its base centre (inside the head) to its
# apex.
NOSE_BASE = (0.15, 0.0, 0.3)
NOSE_TIP = (0.5, 0.0, 0.3)
NOSE_RADIUS = 0.1
NOSE_LENGTH = NOSE_TIP[0] - NOSE_BASE[0]


def _sphere(x, y, z, center, radius):
  """|p - c| - r."""
  cx, cy, cz = center
  return jnp.sqrt((x - cx)**2 + (y - cy)**2 + (z - cz)**2) - radius


def _box(x, y, z, half_extent):
  """Exact SDF of an axis-aligned cube centred at 0.

  With q = |p| - b: |max(q, 0)| outside plus min(max_k q_k, 0) inside.
  """
  qx = jnp.abs(x) - half_extent
  qy = jnp.abs(y) - half_extent
  qz = jnp.abs(z) - half_extent
  outside = jnp.sqrt(jnp.maximum(qx, 0.0)**2 + jnp.maximum(qy, 0.0)**2
                     + jnp.maximum(qz, 0.0)**2)
  inside = jnp.minimum(jnp.maximum(jnp.maximum(qx, qy), qz), 0.0)
  return outside + inside


def _capped_cone(axial, radial, half_height, radius_low, radius_high):
  """Exact SDF of a capped cone in its own (axial, radial) coordinates.

  The solid of revolution of the trapezoid with corners (0, -h), (r_lo, -h),
  (r_hi, h), (0, h) in the (radial, axial) half-plane. For a solid of
  revolution the 3D distance equals the 2D distance in the meridian half-plane
  through the point, so this is exact. The 2D distance is the smaller of the
  distances to the caps (vector ca) and to the slanted side (vector cb); the
  sign is negative where the point is between the caps and inside the side.

  Args:
    axial: [...] coordinate along the axis, measured from the cone's middle.
    radial: [...] distance from the axis (>= 0).
    half_height: h, half the cone's length.
    radius_low: radius at axial = -h.
    radius_high: radius at axial = +h (0 for a pointed cone).

  Returns:
    [...] signed distances.
  """
  h, r0, r1 = half_height, radius_low, radius_high
  cap_radius = jnp.where(axial < 0.0, r0, r1)
  ca_r = radial - jnp.minimum(radial, cap_radius)
  ca_a = jnp.abs(axial) - h
  # The side runs from k1 = (r1, h) (top corner) back along k2 = (r1 - r0, 2h)
  # to the bottom corner; its nearest point to q is k1 - s k2, s in [0, 1].
  k2_r, k2_a = r1 - r0, 2.0 * h
  s = jnp.clip(((r1 - radial) * k2_r + (h - axial) * k2_a)
               / (k2_r**2 + k2_a**2), 0.0, 1.0)
  cb_r = radial - r1 + k2_r * s
  cb_a = axial - h + k2_a * s
  sign = jnp.where((cb_r < 0.0) & (ca_a < 0.0), -1.0, 1.0)
  dist2 = jnp.minimum(ca_r**2 + ca_a**2, cb_r**2 + cb_a**2)
  return sign * jnp.sqrt(dist2)


# Each SDF below takes the coordinates x, y, z as separate [...] arrays:
# element-wise code on whole arrays is what XLA fuses into one fast loop.


def _cube(x, y, z):
  return _box(x, y, z, 0.4)


def _ball(x, y, z):
  return _sphere(x, y, z, (0.0, 0.0, 0.0), 0.5)


def _cone(x, y, z):
  return _capped_cone(z, jnp.sqrt(x * x + y * y), 0.45, 0.45, 0.0)


def _torus(x, y, z):
  """|(|p_xy| - R, p_z)| - r with R = 0.45, r = 0.15."""
  ring = jnp.sqrt(x * x + y * y) - 0.45
  return jnp.sqrt(ring * ring + z * z) - 0.15


def _snowman_parts(x, y, z):
  body = _sphere(x, y, z, BODY_CENTER, BODY_RADIUS)
  head = _sphere(x, y, z, HEAD_CENTER, HEAD_RADIUS)
  # The nose's axis is +x through the head centre; its middle is half a
  # length in front of the base, its wide end (radius_low) at the base.
  axial = x - (NOSE_BASE[0] + 0.5 * NOSE_LENGTH)
  radial = jnp.sqrt((y - NOSE_BASE[1])**2 + (z - NOSE_BASE[2])**2)
  nose = _capped_cone(axial, radial, 0.5 * NOSE_LENGTH, NOSE_RADIUS, 0.0)
  return body, head, nose


def _snowman(x, y, z):
  body, head, nose = _snowman_parts(x, y, z)
  return jnp.minimum(jnp.minimum(body, head), nose)


def _constant(color):
  def albedo_fn(x, y, z):
    del y, z
    return jnp.broadcast_to(jnp.asarray(color, x.dtype), x.shape + (3,))
  return albedo_fn


def _snowman_albedo(x, y, z):
  """White where body or head is the nearest part, orange where the nose is."""
  body, head, nose = _snowman_parts(x, y, z)
  is_nose = nose < jnp.minimum(body, head)
  return jnp.where(is_nose[..., None], jnp.asarray(ORANGE, x.dtype),
                   jnp.asarray(WHITE, x.dtype))


_OBJECTS: Dict[str, Tuple[Callable, Callable]] = {
    'a red cube': (_cube, _constant(RED)),
    'a blue sphere': (_ball, _constant(BLUE)),
    'a green cone': (_cone, _constant(GREEN)),
    'a yellow torus': (_torus, _constant(YELLOW)),
    'a snowman': (_snowman, _snowman_albedo),
}


def _split(points):
  points = jnp.asarray(points)
  return points[..., 0], points[..., 1], points[..., 2]


def check_prompt(name: str, flag: str = '--config.prompt') -> None:
  """Raises UserError unless `name` is one of PROMPTS; the fix names `flag`."""
  if name not in _OBJECTS:
    known = ', '.join(repr(p) for p in PROMPTS)
    raise errors.UserError(
        f'{name!r} is not a toy-world prompt; set {flag} to one of {known}.')


def prompt_index(name: str) -> int:
  """Position of `name` in PROMPTS (UserError if unknown)."""
  check_prompt(name)
  return PROMPTS.index(name)


def _select(obj: Object, which: int) -> Callable:
  """The SDF (which = 0) or albedo (which = 1) function of `obj`."""
  if isinstance(obj, str):
    check_prompt(obj)
    return _OBJECTS[obj][which]
  fns = [_OBJECTS[p][which] for p in PROMPTS]
  return lambda *xyz: jax.lax.switch(obj, fns, *xyz)


def sdf(obj: Object, points):
  """Signed distance to an object.

  Args:
    obj: a prompt from PROMPTS, or its index into PROMPTS as an int scalar
      that may be traced (the object is then chosen by lax.switch, so one
      compiled function serves every object).
    points: [..., 3] world positions.

  Returns:
    [...] signed distances, negative inside.
  """
  return _select(obj, 0)(*_split(points))


def albedo(obj: Object, points):
  """Linear-RGB albedo of an object at `points`.

  Args:
    obj: a prompt from PROMPTS or its index (see `sdf`).
    points: [..., 3] world positions (meaningful on or near the surface).

  Returns:
    [..., 3] albedo in [0, 1].
  """
  return _select(obj, 1)(*_split(points))


def sdf_xyz(obj: Object, x, y, z):
  """`sdf` with the coordinates as separate [...] arrays (fast in loops)."""
  return _select(obj, 0)(x, y, z)


def snowman_parts(points):
  """SDFs of the snowman's body, head and nose: [..., 3] -> 3 x [...]."""
  return _snowman_parts(*_split(points))
