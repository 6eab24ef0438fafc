"""Exports of a trained scene: coloured meshes, turntable videos and images.

Mesh: the density field is sampled on a regular grid, marching cubes
extracts the iso-surface at a threshold, small floating pieces are dropped
and each vertex takes the field's albedo at its position. The mesh is written
as GLB, OBJ (+MTL) and PLY.

Images: turntable frames go to H.264 mp4, a small gif and a contact sheet
PNG; depth and normals get helpers that make them displayable.

Every piece takes plain callables and arrays, so it runs without a trained
model; `export_all` is the glue from a NeRF and its params to the files.
"""

import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import imageio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import skimage.measure
import trimesh

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import render as render_lib
from dreamfusion_jax import shading as shading_lib

# Points per field evaluation: large enough to keep an accelerator busy, small
# enough that an MLP's activations for one chunk fit in memory.
DEFAULT_CHUNK = 65536

PointFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------
# Field evaluation.
# ----------------------------------------------------------------------------


def _as_partial(fn: PointFn) -> jax.tree_util.Partial:
  """Wraps `fn` so that it can be an argument of a jitted function.

  A `jax.tree_util.Partial` carries its bound arguments (e.g. params) as
  pytree leaves, so they are traced rather than baked into the program as
  constants; a plain callable is treated as static.
  """
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


def grid_coordinates(resolution: int, bound: float) -> np.ndarray:
  """The [R] coordinates of the grid's vertices along each axis.

  Samples sit on the vertices of a regular grid: R points from -bound to
  +bound inclusive, spacing 2 bound / (R - 1).
  """
  return np.linspace(-bound, bound, resolution, dtype=np.float32)


@functools.partial(jax.jit, static_argnames=('resolution', 'chunk'))
def _density_grid(density_fn, bound, resolution, chunk):
  n = resolution ** 3
  num_chunks = -(-n // chunk)
  spacing = 2.0 * bound / (resolution - 1)

  def one_chunk(start):
    # Points are made from flat indices inside the loop, so no [R^3, 3]
    # array is ever built; indices past the end are evaluated and dropped.
    idx = start + jnp.arange(chunk)
    ijk = jnp.stack([idx // (resolution * resolution),
                     (idx // resolution) % resolution,
                     idx % resolution], axis=-1)
    points = -bound + ijk.astype(jnp.float32) * spacing
    return jnp.reshape(density_fn(points), (chunk,))

  out = jax.lax.map(one_chunk, jnp.arange(num_chunks) * chunk)
  return out.reshape(-1)[:n].reshape(resolution, resolution, resolution)


def density_grid(density_fn: PointFn, resolution: int, bound: float,
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """Samples a density field on a regular grid over [-bound, bound]^3.

  Args:
    density_fn: points [N, 3] -> densities [N]; a plain callable or a
      `jax.tree_util.Partial` whose bound arguments (params) are traced.
    resolution: R, grid vertices per axis (>= 2).
    bound: half-width of the sampled cube.
    chunk: points per evaluation; one compiled program handles every chunk.

  Returns:
    [R, R, R] float32 array; entry [i, j, k] is the density at
    (x_i, y_j, z_k) with coordinates from `grid_coordinates`.
  """
  if resolution < 2:
    raise errors.UserError(
        f'The mesh grid resolution is {resolution}; use at least 2, e.g. '
        '--config.export.mesh_resolution=128.')
  chunk = min(chunk, resolution ** 3)
  grid = _density_grid(_as_partial(density_fn), jnp.float32(bound),
                       resolution, chunk)
  return np.asarray(grid, dtype=np.float32)


@jax.jit
def _apply(fn, points):
  return fn(points)


def evaluate_points(fn: PointFn, points: np.ndarray,
                    chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """Evaluates `fn` on [N, 3] points in fixed-size, zero-padded chunks.

  Every chunk has the same shape, so `fn` compiles once for any N.

  Returns:
    np.ndarray [N, ...], the stacked outputs.
  """
  points = np.asarray(points, np.float32)
  n = len(points)
  # Small inputs get a smaller (power-of-two) chunk to avoid wasted work.
  chunk = int(min(chunk, 2 ** int(np.ceil(np.log2(max(n, 1))))))
  fn = _as_partial(fn)
  outputs = []
  for start in range(0, n, chunk):
    block = points[start:start + chunk]
    valid = len(block)
    block = np.pad(block, ((0, chunk - valid), (0, 0)))
    outputs.append(np.asarray(_apply(fn, block))[:valid])
  return np.concatenate(outputs, axis=0)


# ----------------------------------------------------------------------------
# Meshes.
# ----------------------------------------------------------------------------


def _finite(grid: np.ndarray) -> np.ndarray:
  # Marching cubes and histograms fail on NaN/inf; an overflowing density is
  # simply very dense, a NaN one is treated as empty.
  big = np.finfo(np.float32).max / 4
  return np.nan_to_num(np.asarray(grid, np.float32), nan=0.0, posinf=big,
                       neginf=0.0)


def _otsu_split(values: np.ndarray, bins: int = 256) -> float:
  """Otsu's threshold: the split maximising the between-class variance."""
  hist, edges = np.histogram(values, bins=bins)
  centres = 0.5 * (edges[:-1] + edges[1:])
  w0 = np.cumsum(hist).astype(np.float64)
  w1 = w0[-1] - w0
  m0 = np.cumsum(hist * centres)
  mu0 = m0 / np.maximum(w0, 1.0)
  mu1 = (m0[-1] - m0) / np.maximum(w1, 1.0)
  between = w0 * w1 * (mu0 - mu1) ** 2
  return float(edges[1 + int(np.argmax(between[:-1]))])


# Transmittance at which a pixel counts as covered: the half-coverage point.
_COVERED_TRANSMITTANCE = 0.5


def _visible_surface_densities(grid: np.ndarray, spacing: float,
                               max_rays_per_axis: int = 128) -> np.ndarray:
  """Densities where rays along the grid axes first become half opaque.

  Rays enter from all six faces of the grid; each accumulates optical depth
  (trapezoid rule) until the transmittance exp(-depth) falls to 0.5, and the
  density there is linearly interpolated. Rays that never get that opaque
  give nothing.

  Returns:
    [M] densities, one per ray that crosses.
  """
  target = -np.log(_COVERED_TRANSMITTANCE)
  # Every stride-th ray per transverse axis: plenty for a median, and it
  # keeps the cost at O(128^2 R) for fine grids.
  stride = max(1, grid.shape[0] // max_rays_per_axis)
  values = []
  for axis in range(3):
    along = np.moveaxis(grid, axis, -1)[::stride, ::stride]
    for d in (along, along[..., ::-1]):
      segment = 0.5 * spacing * (d[..., 1:] + d[..., :-1])
      depth = np.concatenate(
          [np.zeros(d.shape[:-1] + (1,), np.float32),
           np.cumsum(segment, axis=-1, dtype=np.float32)], axis=-1)
      crossed = depth >= target
      hit = crossed.any(axis=-1)
      if not hit.any():
        continue
      # depth[..., 0] = 0 < target, so the first crossing index is >= 1.
      i = np.argmax(crossed, axis=-1)[hit][:, None]
      depth, d = depth[hit], d[hit]
      d0 = np.take_along_axis(d, i - 1, -1)[:, 0]
      d1 = np.take_along_axis(d, i, -1)[:, 0]
      t0 = np.take_along_axis(depth, i - 1, -1)[:, 0]
      t1 = np.take_along_axis(depth, i, -1)[:, 0]
      f = (target - t0) / np.maximum(t1 - t0, 1e-30)
      values.append(d0 + f * (d1 - d0))
  if not values:
    return np.zeros((0,), np.float32)
  return np.concatenate(values)


def _split_threshold(density: np.ndarray) -> float:
  """Halfway between the empty and occupied classes' median densities.

  The classes are split by Otsu's method on log(1 + density), so that it
  works for exp-activated fields whose densities span decades.
  """
  lo, hi = float(density.min()), float(density.max())
  log_density = np.log1p(np.maximum(density, 0.0))
  occupied = log_density > _otsu_split(log_density)
  if occupied.all() or not occupied.any():
    return 0.5 * (lo + hi)
  return float(0.5 * (np.median(density[~occupied]) +
                      np.median(density[occupied])))


def choose_threshold(grid: np.ndarray, bound: float = 1.0) -> float:
  """An iso-level for marching cubes: the density of the visible surface.

  Rule: cast rays along the grid axes from all six faces, find where each
  first becomes half opaque (optical depth ln 2, the volume-rendering
  transmittance falling to 0.5), and take the median density there. The
  mesh then follows the silhouette the renders show, whatever the scale of
  the densities: for an exp field exp(k (r0 - |x|)) the level is about
  k ln 2 and for a sharp-edged object it lies inside the jump. A soft edge
  gives a surface in its outer, opaque part: for 50 sigmoid(20 (0.5 - |x|))
  the mesh has radius ~0.58, the radius where renders become opaque.

  When no ray gets half opaque (a faint field), the level is halfway between
  the median densities of the empty and occupied samples, split by Otsu's
  method on log(1 + density).

  Args:
    grid: [R, R, R] densities sampled on the vertices of a grid over
      [-bound, bound]^3 (`density_grid`).
    bound: the grid's half-width, which sets the sample spacing.

  Returns:
    The threshold (float); equal to the maximum for a constant grid, which
    has no surface.
  """
  grid = np.maximum(_finite(grid), 0.0)
  lo, hi = float(grid.min()), float(grid.max())
  if hi <= lo:
    return hi
  spacing = 2.0 * bound / (grid.shape[0] - 1)
  densities = _visible_surface_densities(grid, spacing)
  if len(densities):
    threshold = float(np.median(densities))
    if lo < threshold < hi:
      return threshold
  return _split_threshold(grid.ravel())


def _no_surface_error(grid: np.ndarray, threshold: float,
                      bound: float) -> errors.UserError:
  """The one-sentence error for a grid with no surface at `threshold`."""
  hi = float(grid.max())
  lo = float(grid.min())
  p99 = float(np.percentile(grid, 99.0))
  where = f'{grid.shape[0]}^3 grid over [-{bound:g}, {bound:g}]^3'
  if hi <= lo:
    return errors.UserError(
        f'The density field is constant ({hi:.3g}) on the {where}, so it has '
        'no surface to mesh; check that the checkpoint is trained and that '
        '--config.export.mesh_bound covers the object.')
  suggestion = choose_threshold(grid, bound)
  if not lo < suggestion < hi:
    suggestion = 0.5 * (lo + hi)
  return errors.UserError(
      f'No surface at density {threshold:.3g} on the {where}: max density is '
      f'{hi:.3g}, the 99th percentile {p99:.3g}; try '
      f'--config.export.mesh_threshold={suggestion:.3g}.')


def remove_small_components(mesh: trimesh.Trimesh,
                            min_fraction: float) -> trimesh.Trimesh:
  """Drops connected pieces with fewer than min_fraction x the largest's faces.

  Pieces are face-connected (sharing an edge). Vertex attributes (colours)
  of the kept vertices are preserved.
  """
  if len(mesh.faces) == 0:
    return mesh
  labels = trimesh.graph.connected_component_labels(
      mesh.face_adjacency, node_count=len(mesh.faces))
  counts = np.bincount(labels)
  keep = counts[labels] >= min_fraction * counts.max()
  if keep.all():
    return mesh
  mesh = mesh.copy()
  mesh.update_faces(keep)
  mesh.remove_unreferenced_vertices()
  return mesh


def mesh_from_grid(grid: np.ndarray, bound: float,
                   threshold: Optional[float] = None,
                   remove_floaters: bool = True,
                   floater_fraction: float = 0.05) -> trimesh.Trimesh:
  """The iso-surface {density = threshold} of a grid, in world coordinates.

  The grid is padded with one layer of empty cells, so a surface that meets
  the grid's boundary is closed there (the mesh stays watertight; its
  vertices may then lie up to one cell outside the bound). Faces wind
  counter-clockwise seen from outside, so normals point out of the object.

  Args:
    grid: [R, R, R] densities from `density_grid` (vertex samples).
    bound: the grid spans [-bound, bound]^3.
    threshold: iso-level; None or negative picks `choose_threshold`.
    remove_floaters: keep only pieces with at least `floater_fraction` of
      the largest piece's faces.
    floater_fraction: see `remove_floaters`.

  Returns:
    A trimesh.Trimesh without colours.

  Raises:
    errors.UserError: no surface at the threshold; the message suggests one.
  """
  grid = _finite(grid)
  if threshold is None or threshold < 0:
    threshold = choose_threshold(grid, bound)
  threshold = float(threshold)
  lo, hi = float(grid.min()), float(grid.max())
  if not lo < threshold < hi:
    raise _no_surface_error(grid, threshold, bound)
  spacing = 2.0 * bound / (grid.shape[0] - 1)
  padded = np.pad(grid, 1, mode='constant', constant_values=lo)
  verts, faces, _, _ = skimage.measure.marching_cubes(
      padded, level=threshold, spacing=(spacing,) * 3, allow_degenerate=False)
  # With the dense side inside, skimage winds triangles clockwise seen from
  # outside; reverse them so normals (and the signed volume) point outward.
  faces = faces[:, ::-1]
  # Index 0 of the padded grid is one cell before -bound.
  verts = verts - (bound + spacing)
  mesh = trimesh.Trimesh(vertices=verts.astype(np.float32), faces=faces,
                         process=False)
  if remove_floaters:
    mesh = remove_small_components(mesh, floater_fraction)
  return mesh


def color_mesh(mesh: trimesh.Trimesh, albedo_fn: PointFn,
               chunk: int = DEFAULT_CHUNK) -> trimesh.Trimesh:
  """Sets per-vertex colours to albedo_fn(vertices) ([N, 3] -> [N, 3]).

  Colours are clipped to [0, 1] and stored as 8-bit RGBA.
  """
  albedo = evaluate_points(albedo_fn, mesh.vertices, chunk)
  rgb = np.clip(np.round(np.clip(albedo, 0.0, 1.0) * 255.0), 0, 255)
  rgba = np.concatenate(
      [rgb.astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], axis=-1)
  mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
  return mesh


def extract_mesh(density_fn: PointFn, albedo_fn: PointFn, resolution: int,
                 bound: float, threshold: Optional[float] = None,
                 remove_floaters: bool = True, floater_fraction: float = 0.05,
                 chunk: int = DEFAULT_CHUNK) -> trimesh.Trimesh:
  """A vertex-coloured mesh of a field's surface by marching cubes.

  Args:
    density_fn: points [N, 3] -> densities [N].
    albedo_fn: points [N, 3] -> albedo [N, 3] in [0, 1].
    resolution: grid vertices per axis.
    bound: the grid spans [-bound, bound]^3.
    threshold: density iso-level; None or negative chooses one
      (`choose_threshold`).
    remove_floaters: drop pieces smaller than `floater_fraction` of the
      largest one (in faces).
    floater_fraction: see `remove_floaters`.
    chunk: points per field evaluation.

  Returns:
    trimesh.Trimesh with world-space vertices and RGBA vertex colours.

  Raises:
    errors.UserError: no surface at the threshold; the message suggests one.
  """
  grid = density_grid(density_fn, resolution, bound, chunk)
  mesh = mesh_from_grid(grid, bound, threshold, remove_floaters,
                        floater_fraction)
  return color_mesh(mesh, albedo_fn, chunk)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
  """The sRGB transfer function's inverse, elementwise on [0, 1] values."""
  c = np.asarray(c, np.float64)
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _write_atomically(path: str, data: bytes) -> None:
  # A crash mid-write leaves the previous file, never a truncated one.
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _obj_text(mesh: trimesh.Trimesh, mtl_name: str) -> str:
  colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
  v = np.concatenate([mesh.vertices, colors], axis=1)
  lines = [f'mtllib {mtl_name}', 'usemtl albedo']
  lines += ['v %.6f %.6f %.6f %.4f %.4f %.4f' % tuple(row) for row in v]
  lines += ['vn %.6f %.6f %.6f' % tuple(n) for n in mesh.vertex_normals]
  lines += ['f {0}//{0} {1}//{1} {2}//{2}'.format(*f)
            for f in (mesh.faces + 1)]
  return '\n'.join(lines) + '\n'


_MTL = """newmtl albedo
Ka 0.000 0.000 0.000
Kd 1.000 1.000 1.000
Ks 0.000 0.000 0.000
d 1.0
illum 1
"""


def write_mesh(mesh: trimesh.Trimesh, out_dir: str,
               name: str = 'mesh') -> List[str]:
  """Writes a vertex-coloured mesh as GLB, OBJ (+MTL) and PLY.

  OBJ stores colours as the common 'v x y z r g b' extension (values in
  [0, 1]) with a white diffuse material in the MTL; PLY stores 8-bit RGBA.
  Both keep the albedo's values as rendered. glTF defines vertex colours as
  linear, so the GLB holds the sRGB-decoded albedo: viewers re-encode it
  and show the colours of the renders.

  Args:
    mesh: trimesh.Trimesh with vertex colours (`extract_mesh`).
    out_dir: created if missing.
    name: file stem.

  Returns:
    The written paths: [glb, obj, mtl, ply].
  """
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, name)
  colors = np.asarray(mesh.visual.vertex_colors)

  glb_mesh = mesh.copy()
  linear = srgb_to_linear(colors[:, :3] / 255.0)
  glb_colors = colors.copy()
  glb_colors[:, :3] = np.round(linear * 255.0).astype(np.uint8)
  glb_mesh.visual = trimesh.visual.ColorVisuals(glb_mesh,
                                                vertex_colors=glb_colors)
  _write_atomically(stem + '.glb', glb_mesh.export(file_type='glb'))

  mtl_name = name + '.mtl'
  _write_atomically(stem + '.obj', _obj_text(mesh, mtl_name).encode())
  _write_atomically(stem + '.mtl', _MTL.encode())
  _write_atomically(stem + '.ply',
                    mesh.export(file_type='ply', encoding='binary'))
  return [stem + '.glb', stem + '.obj', stem + '.mtl', stem + '.ply']


# ----------------------------------------------------------------------------
# Images and videos.
# ----------------------------------------------------------------------------


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] -> uint8, same shape."""
  images = np.nan_to_num(np.asarray(images, np.float32))
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_even(frames: np.ndarray) -> np.ndarray:
  # yuv420p halves the chroma resolution, so H.264 needs even sizes.
  _, h, w, _ = frames.shape
  return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')


def _tmp_path(path: str) -> str:
  # Keep the extension: imageio chooses the container from it.
  root, ext = os.path.splitext(path)
  return root + '.tmp' + ext


def write_video(frames, path: str, fps: int = 30) -> str:
  """Writes frames [N, H, W, 3] (float in [0, 1]) as an H.264 mp4.

  The pixel format is yuv420p, which every player decodes; an odd height or
  width is padded by one edge row or column.

  Returns:
    path.
  """
  frames = _pad_even(to_uint8(frames))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_path(path)
  # macro_block_size=1 stops imageio from resizing frames to multiples of 16.
  with imageio.v2.get_writer(tmp, format='FFMPEG', mode='I', fps=fps,
                             codec='libx264', pixelformat='yuv420p',
                             quality=8, macro_block_size=1,
                             ffmpeg_log_level='error') as writer:
    for frame in frames:
      writer.append_data(frame)
  os.replace(tmp, path)
  return path


def write_gif(frames, path: str, fps: int = 15, max_size: int = 128) -> str:
  """Writes frames [N, H, W, 3] (float in [0, 1]) as a looping gif.

  Frames are downscaled so the longer side is at most `max_size`, which
  keeps a 120-frame turntable at a few MB.

  Returns:
    path.
  """
  frames = to_uint8(frames)
  _, h, w, _ = frames.shape
  scale = min(1.0, max_size / max(h, w))
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  images = []
  for frame in frames:
    image = Image.fromarray(frame)
    if size != (w, h):
      image = image.resize(size, Image.Resampling.LANCZOS)
    images.append(image.quantize(colors=256))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_path(path)
  images[0].save(tmp, save_all=True, append_images=images[1:],
                 duration=max(20, round(1000 / fps)), loop=0)
  os.replace(tmp, path)
  return path


def contact_sheet(frames, num: int = 8, columns: int = 4) -> np.ndarray:
  """`num` evenly spaced frames tiled row-major into one image.

  Args:
    frames: [N, H, W, C].
    num: frames to show (at most N).
    columns: tiles per row.

  Returns:
    [rows * H, columns * W, C] with rows = ceil(num / columns); unused
    tiles are white.
  """
  frames = np.asarray(frames, np.float32)
  n, h, w, c = frames.shape
  num = min(num, n)
  columns = min(columns, num)
  rows = -(-num // columns)
  picks = np.linspace(0, n, num, endpoint=False).astype(int)
  sheet = np.ones((rows * h, columns * w, c), np.float32)
  for tile, index in enumerate(picks):
    r, col = divmod(tile, columns)
    sheet[r * h:(r + 1) * h, col * w:(col + 1) * w] = frames[index]
  return sheet


def write_png(image, path: str) -> str:
  """Writes an [H, W, 3] float image in [0, 1] as PNG; returns path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_path(path)
  Image.fromarray(to_uint8(image)).save(tmp)
  os.replace(tmp, path)
  return path


def _composite(rgb, opacity, background):
  if opacity is None:
    return rgb
  opacity = np.clip(np.asarray(opacity, np.float32), 0.0, 1.0)[..., None]
  return rgb * opacity + np.asarray(background, np.float32) * (1.0 - opacity)


# Anchors of a perceptually ordered ramp from dark purple to pale yellow.
_RAMP = np.array([[0.00, 0.00, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33],
                  [0.98, 0.55, 0.04], [0.99, 1.00, 0.64]], np.float32)


def colorize_depth(depth, opacity=None, near: Optional[float] = None,
                   far: Optional[float] = None,
                   background=1.0) -> np.ndarray:
  """Depth [..., H, W] -> colour [..., H, W, 3]: near bright, far dark.

  Depth is normalised with one range for all frames, so a turntable does not
  flicker: [near, far] defaults to the 1st and 99th percentiles of the depth
  where opacity > 0.5 (everywhere when opacity is None).

  Args:
    depth: [..., H, W] expected ray distance (the renderer's depth).
    opacity: [..., H, W] or None; pixels are composited over `background`.
    near: distance shown brightest.
    far: distance shown darkest.
    background: scalar or [3] colour where opacity is 0.

  Returns:
    [..., H, W, 3] float in [0, 1].
  """
  depth = np.asarray(depth, np.float32)
  if opacity is not None:
    # Composited depth is weighted by opacity; undo that to get the surface
    # distance of partly covered pixels.
    o = np.asarray(opacity, np.float32)
    depth = np.where(o > 1e-6, depth / np.maximum(o, 1e-6), 0.0)
    mask = o > 0.5
  else:
    mask = np.isfinite(depth)
  values = depth[mask] if mask.any() else depth.ravel()
  if near is None:
    near = float(np.percentile(values, 1.0))
  if far is None:
    far = float(np.percentile(values, 99.0))
  t = np.clip((depth - near) / max(far - near, 1e-6), 0.0, 1.0)
  s = (1.0 - t) * (len(_RAMP) - 1)
  i = np.minimum(np.floor(s).astype(int), len(_RAMP) - 2)
  f = (s - i)[..., None]
  rgb = _RAMP[i] * (1.0 - f) + _RAMP[i + 1] * f
  return _composite(rgb, opacity, background)


def normals_to_rgb(normals, opacity=None, rotation=None,
                   background=1.0) -> np.ndarray:
  """Normals [..., H, W, 3] -> colour [..., H, W, 3] as (n + 1) / 2.

  Args:
    normals: [..., H, W, 3] world-space normals, e.g. the renderer's
      composited normals (any length; they are normalised).
    opacity: [..., H, W] or None; pixels are composited over `background`.
    rotation: [..., 3, 3] camera-to-world rotations (columns right, up,
      back) or None. When given, normals are shown in camera space, so a
      surface facing the camera is blue in every frame of a turntable.
    background: scalar or [3] colour where opacity is 0.

  Returns:
    [..., H, W, 3] float in [0, 1].
  """
  n = np.asarray(normals, np.float32)
  if rotation is not None:
    n = np.einsum('...ji,...hwj->...hwi', np.asarray(rotation, np.float32), n)
  length = np.linalg.norm(n, axis=-1, keepdims=True)
  n = np.where(length > 1e-6, n / np.maximum(length, 1e-6), 0.0)
  return _composite(0.5 * (n + 1.0), opacity, background)


def write_turntable(frames, out_dir: str, name: str, fps: int,
                    gif_size: int = 128) -> List[str]:
  """Writes one turntable [N, H, W, 3] as name.mp4, name.gif, name.png."""
  return [
      write_video(frames, os.path.join(out_dir, name + '.mp4'), fps),
      write_gif(frames, os.path.join(out_dir, name + '.gif'), fps, gif_size),
      write_png(contact_sheet(frames), os.path.join(out_dir, name + '.png')),
  ]


# ----------------------------------------------------------------------------
# Glue: a NeRF and its params -> files.
# ----------------------------------------------------------------------------


def _field_density(model, params, points):
  return model.apply(params, points, method=model.density_and_albedo)[0]


def _field_albedo(model, params, points):
  return model.apply(params, points, method=model.density_and_albedo)[1]


def field_functions(model, params) -> Tuple[PointFn, PointFn]:
  """(density_fn, albedo_fn) of a NeRF: [N, 3] -> [N] and [N, 3] -> [N, 3].

  The params travel as traced pytree leaves, not compile-time constants,
  which keeps compilation fast for large (hash-grid) fields.
  """
  return (jax.tree_util.Partial(functools.partial(_field_density, model),
                                params),
          jax.tree_util.Partial(functools.partial(_field_albedo, model),
                                params))


def render_turntable(model, params, config: ml_collections.ConfigDict
                     ) -> Dict[str, np.ndarray]:
  """Renders an orbit around the object in albedo and textureless shading.

  Cameras: `config.export.num_frames` views at `config.export.elevation`,
  `config.camera.eval_distance` and `config.camera.eval_focal`, with a
  headlight.

  Returns:
    Displayable frames, each [N, H, W, 3] float in [0, 1]: 'rgb' (albedo),
    'textureless' (white, lit), 'normals' (camera space), 'depth'.
  """
  e = config.export
  cams = cameras_lib.orbit_cameras(e.num_frames, e.elevation,
                                   config.camera.eval_distance,
                                   config.camera.eval_focal)
  textureless = shading_lib.lambertian(ambient=config.shading.ambient,
                                       diffuse=config.shading.diffuse,
                                       textureless=True)
  outputs = {'rgb': [], 'textureless': [], 'opacity': [], 'depth': [],
             'normals': []}
  for i in range(e.num_frames):
    cam = jax.tree.map(lambda a, i=i: a[i], cams)
    plain = render_lib.render_image(model, params, cam, e.resolution,
                                    config.render, shading_lib.albedo_only())
    lit = render_lib.render_image(model, params, cam, e.resolution,
                                  config.render, textureless)
    for k in ('rgb', 'opacity', 'depth', 'normals'):
      outputs[k].append(np.asarray(plain[k]))
    outputs['textureless'].append(np.asarray(lit['rgb']))
  outputs = {k: np.stack(v) for k, v in outputs.items()}
  return {
      'rgb': outputs['rgb'],
      'textureless': outputs['textureless'],
      'normals': normals_to_rgb(outputs['normals'], outputs['opacity'],
                                np.asarray(cams.rotation)),
      'depth': colorize_depth(outputs['depth'], outputs['opacity']),
  }


def export_all(config: ml_collections.ConfigDict, model, params,
               out_dir: str) -> List[str]:
  """Writes turntables (mp4, gif, contact sheet) and the mesh to out_dir.

  Files: {rgb,textureless,normals,depth}.{mp4,gif,png} and
  mesh.{glb,obj,mtl,ply}.

  Raises:
    errors.UserError: the field has no surface at the mesh threshold.

  Returns:
    The written paths.
  """
  e = config.export
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, frames in render_turntable(model, params, config).items():
    paths += write_turntable(frames, out_dir, name, e.fps, e.gif_size)
  density_fn, albedo_fn = field_functions(model, params)
  mesh = extract_mesh(density_fn, albedo_fn, e.mesh_resolution, e.mesh_bound,
                      threshold=e.mesh_threshold,
                      remove_floaters=e.remove_floaters,
                      floater_fraction=e.floater_fraction)
  paths += write_mesh(mesh, out_dir, 'mesh')
  return paths
