"""Scores of a generated 3D object against the toy world's ground truth.

The generated object is seen only through two callables supplied by the
caller (e.g. the trained NeRF's field):

  density_fn(points [N, 3]) -> [N] density,
  albedo_fn(points [N, 3]) -> [N, 3] albedo in [0, 1].

Metrics:

  iou           volumetric IoU of {density > threshold} and the true solid
                {sdf < 0} on the cell centres of a regular grid over
                [-bound, bound]^3.
  albedo_error  mean absolute albedo error (over points and channels) on the
                true surface: of the field's albedo there, or (given the
                density too) of the albedo a ray along the inward normal
                sees there.
  normal_angle  mean angle (degrees) between the field's normal,
                -grad density / |grad density|, and the true outward normal
                at points spread uniformly in area on the true surface: how
                well the shape's surface, not only its silhouette, is made.
  janus_check   for the snowman: does the generated object have a nose on
                the front (+x), the back (-x), the left (+y), the right (-y)?
                The right answer is the front only; a nose on the back as
                well is the Janus problem.

The results depend on the density threshold (the surface of a NeRF is soft):
DESIGN.md section 7 found density > 5 a good surface level for the toy
configuration.
"""

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from dreamfusion_jax import numerics
from dreamfusion_jax import render
from dreamfusion_jax.toy import objects
from dreamfusion_jax.toy import raytrace

DensityFn = Callable[[jax.Array], jax.Array]
AlbedoFn = Callable[[jax.Array], jax.Array]

_CHUNK = 65536


@jax.jit
def _true_sdf(index, points):
  return objects.sdf(index, points)


_snowman_parts = jax.jit(objects.snowman_parts)


@jax.jit
def _project_to_surface(index, points):
  """Four steps x <- x - f(x) n(x); returns the points and their f."""
  for _ in range(4):
    points = points - (objects.sdf(index, points)[:, None]
                       * raytrace.normals(index, points))
  return points, objects.sdf(index, points)


def grid_points(resolution: int = 64, bound: float = 1.0) -> np.ndarray:
  """Cell centres of a resolution^3 grid over [-bound, bound]^3: [R^3, 3]."""
  c = (np.arange(resolution, dtype=np.float32) + 0.5) * (
      2.0 * bound / resolution) - bound
  return np.stack(np.meshgrid(c, c, c, indexing='ij'), -1).reshape(-1, 3)


def iou(name: str, density_fn: DensityFn, threshold: float,
        resolution: int = 64, bound: float = 1.0) -> float:
  """Volumetric IoU of generated occupancy and the true solid.

  |A n B| / |A u B| with A = {x : density_fn(x) > threshold} and
  B = {x : sdf(x) < 0}, counted on the resolution^3 cell centres of
  [-bound, bound]^3.

  Args:
    name: the toy prompt whose object is the ground truth.
    density_fn: points [N, 3] -> [N] density.
    threshold: density above which a point counts as occupied.
    resolution: grid cells per axis.
    bound: half-width of the grid's cube.

  Returns:
    IoU in [0, 1].
  """
  index = objects.prompt_index(name)
  points = grid_points(resolution, bound)
  generated = numerics.evaluate_points(density_fn, points) > threshold
  truth = numerics.evaluate_points(
      jax.tree_util.Partial(_true_sdf, index), points) < 0.0
  union = np.sum(generated | truth)
  return float(np.sum(generated & truth) / max(union, 1))


def surface_points(name: str, num_points: int, key=None,
                   shell: float = 0.01) -> np.ndarray:
  """Points spread uniformly in area over object `name`'s true surface.

  Uniform points in the bounding cube are kept if they lie in the shell
  |f(x)| < `shell` and projected onto the surface, x <- x - f(x) grad f(x)
  (exact for an exact SDF where its gradient is defined), four times. Near
  a surface the shell is 2 * shell thick everywhere, so the projected
  points are uniform in area up to O(shell * curvature); projecting points
  from the whole cube instead would pile them onto edges and corners (half
  of a cube's points within 0.03 of an edge, which holds 14% of its area).
  Points that do not land on the surface (|f| >= 1e-4, e.g. inside the
  snowman's overlap) are dropped.

  Args:
    name: a toy prompt.
    num_points: points returned.
    key: PRNG key; None means a fixed key (deterministic).
    shell: half-thickness of the shell the points are drawn from.
  """
  index = objects.prompt_index(name)
  key = jax.random.key(0) if key is None else key
  b = raytrace.BOUND_RADIUS
  found, total = [], 0
  for i in range(256):
    p = jax.random.uniform(jax.random.fold_in(key, i), (_CHUNK, 3),
                           minval=-b, maxval=b)
    near = np.abs(np.asarray(_true_sdf(index, p))) < shell
    p, f = _project_to_surface(index, p)
    p = np.asarray(p)[near & (np.abs(np.asarray(f)) < 1e-4)]
    found.append(p)
    total += p.shape[0]
    if total >= num_points:
      return np.concatenate(found)[:num_points]
  raise ValueError(f'Found only {total} of {num_points} points on the '
                   f'surface of {name!r}; use fewer points or a wider shell.')


def albedo_error(name: str, albedo_fn: AlbedoFn, num_points: int = 4096,
                 key=None, density_fn: DensityFn = None,
                 depth: float = 0.1, background: float = 0.5) -> float:
  """Mean |albedo - true albedo| over true-surface points and channels.

  Without density_fn, the albedo is albedo_fn at each true-surface point.
  A field with a sharp surface a little inside the true one then gets
  scored on the colour of its empty space there, which nothing constrains.
  With density_fn, it is the albedo a ray sees there: the point's ray along
  the true inward normal, from `depth` outside the surface to `depth`
  inside (64 samples), composited over a grey `background`, so a generated
  surface within `depth` of the true one is scored on its own colour and a
  missing one on the background's.

  Args:
    name: the toy prompt whose object is the ground truth.
    albedo_fn: points [N, 3] -> [N, 3] albedo in [0, 1].
    num_points: surface points (see surface_points).
    key: PRNG key for the points; None means a fixed key.
    density_fn: points [N, 3] -> [N] density, or None.
    depth: half-length of the rays (units of the scene).
    background: grey level behind the rays.

  Returns:
    The mean absolute error, in [0, 1].
  """
  points = surface_points(name, num_points, key)
  truth = np.asarray(objects.albedo(name, points))
  if density_fn is None:
    generated = numerics.evaluate_points(albedo_fn, points)
  else:
    generated = _seen_albedo(name, points, albedo_fn, density_fn, depth,
                             background)
  return float(np.mean(np.abs(generated - truth)))


def _field_normals(density_fn, points):
  """-grad density / |grad density| at points [N, 3] (zero where flat)."""
  grad = jax.grad(lambda p: jnp.sum(density_fn(p)))(points)
  return -numerics.safe_normalize(grad)


def away_from_creases(name: str, points: np.ndarray,
                      margin: float = 0.05) -> np.ndarray:
  """[N] bool: no crease (cube edge, cone rim or apex) within `margin`.

  A point is near a crease when the true normal `margin` away from it, in
  one of four tangent directions, turns by more than 30 degrees; a smooth
  surface turns by far less (the sphere: 5.7 degrees over 0.05).
  """
  index = objects.prompt_index(name)
  truth = np.asarray(raytrace.normals(index, jnp.asarray(points)))
  helper = np.where(np.abs(truth[:, :1]) < 0.9, [[1.0, 0.0, 0.0]],
                    [[0.0, 1.0, 0.0]])
  u = np.cross(truth, helper)
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  v = np.cross(truth, u)
  keep = np.ones(len(points), bool)
  for tangent in (u, -u, v, -v):
    moved = np.asarray(raytrace.normals(
        index, jnp.asarray(points + margin * tangent, jnp.float32)))
    keep &= np.sum(moved * truth, axis=-1) > np.cos(np.radians(30.0))
  return keep


def normal_angle(name: str, density_fn: DensityFn, num_points: int = 4096,
                 key=None, crease_margin: float = 0.05) -> float:
  """Mean angle in degrees between the field's and the true normals.

  At points spread uniformly in area on the true surface (surface_points),
  away from creases (`away_from_creases`: a cube's edges have no single
  normal, and a field necessarily rounds them), the field's normal is
  -grad density / |grad density| (by autodiff of density_fn, which must be
  differentiable, e.g. a NeRF's field) and the true one the SDF's outward
  normal. A field with no density gradient at a point scores 90 degrees
  there; a surface that is right but offset by a fraction of its curvature
  radius still scores near 0.

  Args:
    name: the toy prompt whose object is the ground truth.
    density_fn: points [N, 3] -> [N] density.
    num_points: surface points.
    key: PRNG key for the points; None means a fixed key.
    crease_margin: distance from creases of the points scored (0: all).

  Returns:
    The mean angle in degrees, in [0, 180].
  """
  points = surface_points(name, num_points, key)
  if crease_margin > 0:
    points = points[away_from_creases(name, points, crease_margin)]
  truth = np.asarray(raytrace.normals(objects.prompt_index(name),
                                      jnp.asarray(points)))
  generated = numerics.evaluate_points(
      jax.tree_util.Partial(_field_normals, numerics.as_partial(density_fn)),
      points)
  cosine = np.clip(np.sum(generated * truth, axis=-1), -1.0, 1.0)
  return float(np.degrees(np.mean(np.arccos(cosine))))


def _seen_albedo(name, points, albedo_fn, density_fn, depth, background,
                 num_samples: int = 64) -> np.ndarray:
  """Albedo composited along inward-normal rays through `points`: [N, 3]."""
  n = np.asarray(raytrace.normals(objects.prompt_index(name),
                                  jnp.asarray(points)))
  delta = 2.0 * depth / num_samples
  s = depth - (np.arange(num_samples) + 0.5) * delta  # Outside to inside.
  samples = (points[:, None, :] + s[None, :, None] * n[:, None, :]).reshape(
      -1, 3).astype(np.float32)
  density = numerics.evaluate_points(density_fn, samples).reshape(
      len(points), num_samples)
  albedo = numerics.evaluate_points(albedo_fn, samples).reshape(
      len(points), num_samples, 3)
  weights = np.asarray(render.compositing_weights(
      jnp.maximum(jnp.asarray(density), 0.0), delta))
  opacity = weights.sum(-1, keepdims=True)
  return (weights[..., None] * albedo).sum(1) + (1.0 - opacity) * background


# Position along the nose's direction, measured from the head's vertical
# axis, beyond which the nose box counts occupancy: 0.08 past the head's
# surface (radius 0.22), the outer 0.2 of the nose's 0.28 that sticks out.
NOSE_REACH = objects.HEAD_RADIUS + 0.08

# (cos, sin) of the turn about the vertical axis that takes the front (+x)
# to each side of the head.
_SIDES = {'front': (1.0, 0.0), 'back': (-1.0, 0.0), 'left': (0.0, 1.0),
          'right': (0.0, -1.0)}


def _nose_box(resolution: int, side: str) -> np.ndarray:
  """Cell centres of the box around the snowman's nose, turned to `side`.

  The box spans x in [0.18, 0.52] (from just inside the head's surface, which
  the nose leaves at x ~ 0.2, to past the apex at 0.5), and y, z within 0.12
  of the nose's axis (its base radius is 0.1). `side` (a key of _SIDES)
  turns it about the vertical axis through the head: 'back' to -x, 'left'
  to +y, 'right' to -y. Grid: (3 n/2, n, n).
  """
  nx = 3 * resolution // 2
  x0, x1 = objects.HEAD_RADIUS - 0.04, objects.NOSE_TIP[0] + 0.02
  half = objects.NOSE_RADIUS + 0.02
  xs = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
  ys = -half + (np.arange(resolution) + 0.5) * 2.0 * half / resolution
  zs = objects.HEAD_CENTER[2] + ys
  x, y, z = np.meshgrid(xs, ys, zs, indexing='ij')
  c, s = _SIDES[side]
  grid = np.stack([c * x - s * y, s * x + c * y, z], -1)
  return grid.reshape(-1, 3).astype(np.float32)


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
  """rgb / (r + g + b): the colour without its brightness; black -> grey."""
  rgb = np.asarray(rgb, np.float32)
  total = rgb.sum(-1, keepdims=True)
  return np.where(total > 1e-3, rgb / np.maximum(total, 1e-3), 1.0 / 3.0)


def janus_check(density_fn: DensityFn, albedo_fn: AlbedoFn, threshold: float,
                resolution: int = 16,
                orange_share: float = 0.5) -> Dict[str, object]:
  """Where a generated snowman has noses: front, back and the two sides.

  For each side of the head (front: the true nose's box around x = +0.35,
  y = 0, z = 0.3; back, left and right: that box turned about the vertical
  axis through the head to -x, +y and -y), on a grid over the box:

  * occupancy: the share of the grid points at least NOSE_REACH out along
    the box's direction from the head's vertical axis (the nose's outer
    part, 0.08 past the head's surface) where density > threshold. The
    true nose fills `gt_occupancy` of them. A head grown a few hundredths past its true surface, as SDS
    leaves it on the back, reaches x = 0.24-0.27 and does not count; a
    nose, which sticks out 0.28, does.
  * orange: the share of the occupied grid points (head included, so a nose
    painted onto the head counts) whose albedo's chromaticity (rgb / sum) is
    nearer (L1) to the nose's orange than to the body's white; 0 when under
    1% of the box is occupied. Chromaticity, not colour: SDS under random
    lights leaves albedo brightness uncertain, and a white head learned as
    mid-grey is nearer to orange than to white in plain colour (L1 0.85
    against 1.2 at grey 0.5), so every side of a grey head read as a nose.

  A side has a nose when occupancy >= gt_occupancy / 2, or orange >=
  `orange_share`. A correct snowman has a nose on the front and nowhere
  else; a nose on the back is the Janus problem, and one on a side (a
  profile photograph of the left read from the right) is the same failure
  turned by 90 degrees.

  Args:
    density_fn: points [N, 3] -> [N] density.
    albedo_fn: points [N, 3] -> [N, 3] albedo in [0, 1].
    threshold: density above which a point counts as occupied.
    resolution: grid points across the box's y and z (1.5x along x).
    orange_share: share of orange occupied points that makes a nose.

  Returns:
    dict with, for each of 'front', 'back', 'left', 'right': a bool (a nose
    there), '<side>_occupancy' and '<side>_orange' (floats); 'side' (a nose
    on the left or the right) and 'gt_occupancy'.
  """
  result = {}
  orange = _chromaticity(np.asarray(objects.ORANGE, np.float32))
  white = _chromaticity(np.asarray(objects.WHITE, np.float32))
  # Every box is the front box turned: the same points are the outer part
  # of each, and the true nose fills its share of the front box's.
  front = _nose_box(resolution, 'front')
  outer = front[:, 0] >= NOSE_REACH
  _, _, nose = _snowman_parts(front)
  gt_occupancy = float(np.mean(np.asarray(nose)[outer] < 0.0))
  for side in _SIDES:
    points = _nose_box(resolution, side)
    occupied = numerics.evaluate_points(density_fn, points) > threshold
    occupancy = float(np.mean(occupied[outer]))
    if np.mean(occupied) >= 0.01:
      hue = _chromaticity(
          numerics.evaluate_points(albedo_fn, points[occupied]))
      is_orange = (np.abs(hue - orange).sum(-1)
                   < np.abs(hue - white).sum(-1))
      orange_fraction = float(np.mean(is_orange))
    else:
      orange_fraction = 0.0
    result[side + '_occupancy'] = occupancy
    result[side + '_orange'] = orange_fraction
    result[side] = bool(occupancy >= 0.5 * gt_occupancy
                        or orange_fraction >= orange_share)
  result['gt_occupancy'] = gt_occupancy
  result['side'] = result['left'] or result['right']
  return result
