"""An analytic renderer of the toy objects: sphere tracing of exact SDFs.

Independent of the NeRF code on purpose: the toy prior's images must not share
bugs with the renderer under test. It shares only the camera model
(`cameras.generate_rays`) and the shading model (`shading.shade`), so that the
prior's images follow the same conventions as NeRF renders.

Per ray o + t d, sphere tracing (Hart 1996) steps t <- t + f(o + t d), which
never crosses the surface because f is a lower bound of the distance to it.
A fixed number of steps keeps it jittable and vectorised; tracing starts where
the ray enters a bounding sphere of radius 0.75 (every object fits inside) and
stops at its exit. A ray hits when |f| < HIT_EPS after the last step.

At a hit x: normal n = grad f(x) / |grad f(x)| (by central differences),
albedo from `objects.albedo`, colour = shading.shade(albedo, n, x, light,
params) with the camera's point light; misses show the constant background
colour. 64 steps leave about 0.1% of rays (grazing ones, at silhouettes)
unresolved; they count as misses.

Anti-aliasing: with `supersample = s`, each pixel averages s x s sub-pixel
rays (the rays of the same camera at s times the resolution, box-filtered).
NeRF renders have soft, partially transparent edges, so the prior's images
are closer to them with s = 2 (config.toy.supersample's default); s = 1
gives hard, binary silhouettes.
"""

import functools

import jax
import jax.numpy as jnp

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import numerics
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.toy import objects

# Every toy object lies inside this sphere (cube corner at 0.4 sqrt(3) = 0.69).
BOUND_RADIUS = 0.75
# A ray hits where the SDF at its final point is below this.
HIT_EPS = 1e-3
# Finite-difference step of the normals (well below the smallest feature, the
# nose's base radius 0.1).
NORMAL_STEP = 1e-3


def _bounding_interval(origins, directions, radius):
  """Entry/exit distances of unit-direction rays through |x| = radius.

  Args:
    origins: [..., 3].
    directions: [..., 3] unit vectors.
    radius: sphere radius (centred at 0).

  Returns:
    t_near [...], t_far [...] with t_near clamped to >= 0; t_far < t_near
    where the ray misses the sphere.
  """
  b = jnp.sum(origins * directions, axis=-1)
  c = jnp.sum(origins * origins, axis=-1) - radius**2
  disc = b * b - c
  root = jnp.sqrt(jnp.maximum(disc, 0.0))
  t_near = jnp.maximum(-b - root, 0.0)
  t_far = jnp.where(disc > 0.0, -b + root, -1.0)
  return t_near, t_far


def trace(obj: objects.Object, origins, directions, num_steps: int = 64):
  """Sphere-traces rays against an object.

  Args:
    obj: a prompt from objects.PROMPTS or its index (see objects.sdf).
    origins: [..., 3] ray origins.
    directions: [..., 3] unit ray directions.
    num_steps: sphere-tracing steps (fixed, for jit).

  Returns:
    t [...] distance along each ray of its final point, and hit [...] bool.
  """
  t_near, t_far = _bounding_interval(origins, directions, BOUND_RADIUS)
  # Coordinates as separate arrays: each step is then one fused loop.
  ox, oy, oz = (origins[..., k] for k in range(3))
  dx, dy, dz = (directions[..., k] for k in range(3))

  def distance(t):
    return objects.sdf_xyz(obj, ox + t * dx, oy + t * dy, oz + t * dz)

  def step(_, t):
    return jnp.minimum(t + distance(t), t_far)

  t = jax.lax.fori_loop(0, num_steps, step, t_near)
  hit = (jnp.abs(distance(t)) < HIT_EPS) & (t < t_far) & (t_far > t_near)
  return t, hit


def normals(obj: objects.Object, points, h: float = NORMAL_STEP):
  """Unit outward normals, the normalised SDF gradient: [..., 3] -> [..., 3].

  The gradient is taken by central differences on the tetrahedron stencil
  k in {(1,-1,-1), (-1,-1,1), (-1,1,-1), (1,1,1)}: grad f ~ sum_k k f(x + h k)
  / (4 h). Not by jax.grad: on the surface itself the exact SDFs' distance
  vectors have length ~0 and their direction is rounding noise, so autodiff
  normals can flip there; differences of values at distance h do not.
  """
  stencil = jnp.array([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0],
                       [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]], points.dtype)
  values = objects.sdf(obj, points[..., None, :] + h * stencil)  # [..., 4]
  grad = jnp.einsum('...k,kd->...d', values, stencil,
                    precision=jax.lax.Precision.HIGHEST)
  return numerics.safe_normalize(grad)


def render(obj: objects.Object, cameras: cameras_lib.Cameras, resolution: int,
           shading_params: shading_lib.ShadingParams,
           background_color=(1.0, 1.0, 1.0), supersample: int = 1,
           num_steps: int = 64):
  """Renders an object from `cameras`.

  Jitted inside, with the object as a traced index: one compilation per
  shape serves every object.

  Args:
    obj: a prompt from objects.PROMPTS or its index, an int scalar that may
      be traced (see objects.sdf).
    cameras: Cameras with leading shape [...]; each camera's light_position is
      its point light.
    resolution: output height and width H = W (static).
    shading_params: ShadingParams with fields of shape [...] (or
      broadcastable to it), e.g. from shading.sample or
      shading.albedo_only().
    background_color: [3] RGB of pixels that miss the object.
    supersample: s, sub-pixel rays per axis averaged per pixel (static).
    num_steps: sphere-tracing steps (static).

  Returns:
    rgb [..., H, W, 3] float32 in [0, 1] and mask [..., H, W] float32, the
    share of each pixel's sub-pixel rays that hit the object (binary when
    supersample = 1).
  """
  if isinstance(obj, str):
    obj = objects.prompt_index(obj)
  return _render(jnp.asarray(obj, jnp.int32), cameras, shading_params,
                 jnp.asarray(background_color, jnp.float32),
                 resolution=resolution, supersample=supersample,
                 num_steps=num_steps)


@functools.partial(jax.jit,
                   static_argnames=('resolution', 'supersample', 'num_steps'))
def _render(index, cameras, shading_params, background_color, *, resolution,
            supersample, num_steps):
  fine = resolution * supersample
  origins, directions = cameras_lib.generate_rays(cameras, fine)
  t, hit = trace(index, origins, directions, num_steps)
  points = origins + t[..., None] * directions
  light = jnp.asarray(cameras.light_position)[..., None, None, :]
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32)[..., None, None],
                        shading_params)
  color = shading_lib.shade(objects.albedo(index, points),
                            normals(index, points), points, light, params)
  rgb = jnp.where(hit[..., None], color, background_color)
  mask = hit.astype(jnp.float32)
  if supersample > 1:
    s = supersample
    batch = rgb.shape[:-3]
    rgb = rgb.reshape(*batch, resolution, s, resolution, s, 3).mean((-4, -2))
    mask = mask.reshape(*batch, resolution, s, resolution, s).mean((-3, -1))
  return jnp.clip(rgb, 0.0, 1.0).astype(jnp.float32), mask
