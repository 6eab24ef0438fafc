"""A UV atlas for a mesh and the field's colour baked into a texture image.

`bake` takes a mesh of a field's surface (`meshing`) and returns a
`TexturedMesh`:

1. `unwrap`: xatlas cuts the mesh into charts and packs them into the unit
   square; every face gets UV coordinates (OBJ convention: v up).
2. `rasterize`: each texel centre is mapped back to the face that covers it
   and its barycentric coordinates, hence to a surface point and an
   interpolated normal. Texels within half a texel diagonal of a face count
   as covered, so bilinear lookups at a chart's rim read baked texels.
3. `seen_colours`: the colour the field shows there is composited along a
   short ray along the inward normal (as `toy.metrics` scores albedo), so a
   mesh a fraction of a cell off the field's visible surface still takes
   the colour of that surface rather than of the empty space beside it.
4. `dilate`: every empty texel takes the colour of its nearest baked texel,
   so mip-maps and bilinear filtering never mix in a background colour
   across a seam.

The field is seen only through callables of points, evaluated in chunks of
fixed shape (`numerics.evaluate_points`), so one program is compiled for
any number of texels.
"""

import dataclasses
import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
import trimesh
import xatlas

from dreamfusion_jax import numerics
from dreamfusion_jax import render

# A texel is covered by a face when its centre lies within this many texels
# of the face: half the texel's diagonal, so any texel the face touches.
_COVER_DISTANCE = 0.71


@dataclasses.dataclass
class TexturedMesh:
  """A mesh, its UV atlas and the baked texture.

  Attributes:
    mesh: the watertight mesh [V vertices, F faces] with vertex normals and
      RGBA vertex colours (the colour seen at each vertex).
    uv_to_vertex: [U] index into mesh.vertices of each UV vertex; vertices
      on a seam appear once per chart.
    uv_faces: [F, 3] faces into the UV vertices, in the order of
      mesh.faces: mesh.faces == uv_to_vertex[uv_faces].
    uv: [U, 2] texture coordinates in [0, 1], (0, 0) at the bottom left
      (OBJ's convention; glTF's v points down and is 1 - v).
    texture: [T, T, 3] float in [0, 1]; row 0 is the top (v = 1).
  """
  mesh: trimesh.Trimesh
  uv_to_vertex: np.ndarray
  uv_faces: np.ndarray
  uv: np.ndarray
  texture: np.ndarray


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int,
           padding: int = 2):
  """Charts of a mesh packed into the unit square, by xatlas.

  Args:
    vertices: [V, 3]; faces: [F, 3].
    texture_size: the texture's side in texels; xatlas packs for it.
    padding: empty texels xatlas keeps between charts.

  Returns:
    uv_to_vertex [U], uv_faces [F, 3] and uv [U, 2] as in `TexturedMesh`.
  """
  vertices = np.asarray(vertices, np.float32)
  faces = np.asarray(faces, np.int64)
  # xatlas skips faces with an area under float32's epsilon (marching cubes
  # leaves slivers of area ~1e-8 where the surface passes near a grid
  # vertex); UVs do not depend on scale, so unwrap a copy 100 units wide.
  extent = float(np.ptp(vertices, axis=0).max()) if len(vertices) else 1.0
  atlas = xatlas.Atlas()
  atlas.add_mesh(vertices * np.float32(100.0 / max(extent, 1e-12)),
                 faces.astype(np.uint32))
  pack = xatlas.PackOptions()
  pack.resolution = texture_size
  pack.padding = padding
  pack.bilinear = True
  atlas.generate(xatlas.ChartOptions(), pack)
  uv_to_vertex, uv_faces, uv = atlas[0]
  uv_to_vertex = uv_to_vertex.astype(np.int64)
  uv_faces = uv_faces.astype(np.int64)
  uv = np.clip(uv.astype(np.float32), 0.0, 1.0)
  return _place_skipped_faces(faces, uv_to_vertex, uv_faces, uv)


def _cross(u, v):
  """The z component of the cross product of 2D vectors [..., 2]."""
  return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _place_skipped_faces(faces, uv_to_vertex, uv_faces, uv):
  """Gives faces that xatlas left at one UV point a neighbour's colour.

  The few faces still skipped (exactly degenerate ones) get three new UV
  vertices at the UV centroid of a charted face that shares a vertex with
  them, so they read that face's colour instead of whatever lies at (0, 0).
  """
  corners = uv[uv_faces]
  area = np.abs(_cross(corners[:, 1] - corners[:, 0],
                       corners[:, 2] - corners[:, 0]))
  skipped = np.flatnonzero(area < 1e-12)
  charted = np.flatnonzero(area >= 1e-12)
  if not len(skipped) or not len(charted):
    return uv_to_vertex, uv_faces, uv
  owner = np.full(int(faces.max()) + 1, charted[0])
  owner[faces[charted].ravel()] = np.repeat(charted, 3)
  centre = corners[owner[faces[skipped, 0]]].mean(axis=1)  # [S, 2]
  new = len(uv) + np.arange(3 * len(skipped)).reshape(-1, 3)
  uv_faces = uv_faces.copy()
  uv_faces[skipped] = new
  return (np.concatenate([uv_to_vertex, faces[skipped].ravel()]), uv_faces,
          np.concatenate([uv, np.repeat(centre, 3, axis=0)]))


def _texel_coordinates(uv: np.ndarray, size: int) -> np.ndarray:
  """UV [..., 2] -> (column, row) where texel (i, j)'s centre is (j, i)."""
  return np.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5],
                  axis=-1)


def rasterize(uv: np.ndarray, uv_faces: np.ndarray, size: int,
              faces_per_block: int = 8192):
  """The face under each texel centre and its barycentric coordinates.

  For a face with corners a, b, c in texel units, the signed distance of a
  texel centre p from the edge opposite a is b_a * 2A / |c - b|, with b_a
  the barycentric coordinate and A the signed area. A texel is covered when
  all three distances are >= -0.71 (within half its diagonal of the face);
  its barycentrics are then clipped to the face. Where faces overlap (along
  shared edges) the one that holds the centre most deeply wins.

  Args:
    uv: [U, 2] texture coordinates; uv_faces: [F, 3].
    size: texture side T.
    faces_per_block: faces handled per vectorised block (bounds memory).

  Returns:
    face [T, T] int (-1 where no face covers the texel) and bary [T, T, 3]
    float32 (rows sum to 1 where covered).
  """
  corners = _texel_coordinates(uv, size)[uv_faces].astype(np.float64)
  texel_ids, face_ids, barys, depths = [], [], [], []
  for start in range(0, len(uv_faces), faces_per_block):
    tri = corners[start:start + faces_per_block]  # [B, 3, 2]
    lo = np.floor(tri.min(axis=1) - 1.0).astype(np.int64).clip(0, size - 1)
    hi = np.ceil(tri.max(axis=1) + 1.0).astype(np.int64).clip(0, size - 1)
    width, height = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = width * height
    # Every texel of every face's bounding box, as (face, column, row).
    face = np.repeat(np.arange(len(tri)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts,
                                                counts)
    col = lo[face, 0] + local % width[face]
    row = lo[face, 1] + local // width[face]
    p = np.stack([col, row], axis=-1).astype(np.float64)
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]

    area2 = _cross(b - a, c - a)
    ok = np.abs(area2) > 1e-12
    safe_area2 = np.where(ok, area2, 1.0)
    bary = np.stack([_cross(c - b, p - b), _cross(a - c, p - c),
                     _cross(b - a, p - a)], axis=-1) / safe_area2[:, None]
    edges = np.stack([np.linalg.norm(c - b, axis=-1),
                      np.linalg.norm(a - c, axis=-1),
                      np.linalg.norm(b - a, axis=-1)], axis=-1)
    distance = bary * np.abs(safe_area2)[:, None] / np.maximum(edges, 1e-12)
    depth = distance.min(axis=-1)
    keep = ok & (depth >= -_COVER_DISTANCE)
    bary = np.clip(bary[keep], 0.0, None)
    texel_ids.append(row[keep] * size + col[keep])
    face_ids.append(face[keep] + start)
    barys.append(bary / np.maximum(bary.sum(-1, keepdims=True), 1e-12))
    depths.append(depth[keep])
  texel = np.concatenate(texel_ids)
  order = np.argsort(-np.concatenate(depths), kind='stable')
  # np.unique returns the first occurrence: the deepest face per texel.
  texel_sorted, first = np.unique(texel[order], return_index=True)
  pick = order[first]
  face_map = np.full(size * size, -1, np.int64)
  bary_map = np.zeros((size * size, 3), np.float32)
  face_map[texel_sorted] = np.concatenate(face_ids)[pick]
  bary_map[texel_sorted] = np.concatenate(barys)[pick]
  return face_map.reshape(size, size), bary_map.reshape(size, size, 3)


def dilate(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
  """Every unfilled texel takes the value of its nearest filled texel.

  A Euclidean distance transform finds the nearest filled texel of every
  texel at once, so the padding around each chart is as wide as the gap to
  the next chart: no mip level averages in an unbaked texel.

  Args:
    image: [T, T, C]; filled: [T, T] bool, not all False.

  Returns:
    [T, T, C], equal to image where filled.
  """
  if filled.all():
    return image
  _, (rows, cols) = scipy.ndimage.distance_transform_edt(
      ~filled, return_indices=True)
  return image[rows, cols]


def _seen_colours(num_samples, density_fn, albedo_fn, depth, rays):
  """Colour along each ray of rays [C, 6] (surface point, unit normal)."""
  points, normals = rays[:, :3], rays[:, 3:]
  delta = 2.0 * depth / num_samples
  # From `depth` outside the surface to `depth` inside it.
  s = depth - (jnp.arange(num_samples) + 0.5) * delta
  samples = points[:, None, :] + s[None, :, None] * normals[:, None, :]
  flat = samples.reshape(-1, 3)
  density = density_fn(flat).reshape(-1, num_samples)
  albedo = albedo_fn(flat).reshape(-1, num_samples, 3)
  weights = render.compositing_weights(jnp.maximum(density, 0.0), delta)
  opacity = jnp.sum(weights, axis=-1, keepdims=True)
  seen = jnp.sum(weights[..., None] * albedo, axis=1) / jnp.maximum(
      opacity, 1e-6)
  # A ray that crosses no density (far from the field's surface) takes the
  # albedo at the surface point itself.
  return jnp.where(opacity > 1e-3, seen, albedo[:, num_samples // 2])


def seen_colours(density_fn: numerics.PointFn, albedo_fn: numerics.PointFn,
                 points: np.ndarray, normals: np.ndarray, depth: float,
                 num_samples: int = 16,
                 chunk: int = numerics.DEFAULT_CHUNK) -> np.ndarray:
  """The colour the field shows at surface points, seen along the normal.

  A ray from `depth` outside the point to `depth` inside it, along the
  inward normal, is composited like a camera ray (NeRF eq. 3, midpoint
  samples) and normalised by its opacity:

    c = sum_i w_i rho(x_i) / sum_i w_i.

  That is the colour of the field's own surface within `depth` of the
  mesh, whatever the density scale; a ray that meets no density takes the
  albedo at the point.

  Args:
    density_fn: points [N, 3] -> [N]; albedo_fn: points [N, 3] -> [N, 3].
    points: [N, 3] surface points; normals: [N, 3] unit outward normals.
    depth: half-length of each ray (scene units).
    num_samples: samples per ray.
    chunk: field evaluations per compiled call (points per call x
      num_samples).

  Returns:
    [N, 3] float32 colours in [0, 1].
  """
  fn = jax.tree_util.Partial(
      functools.partial(_seen_colours, num_samples),
      numerics.as_partial(density_fn), numerics.as_partial(albedo_fn),
      jnp.float32(depth))
  rays = np.concatenate([points, normals], axis=-1).astype(np.float32)
  colours = numerics.evaluate_points(fn, rays, max(1, chunk // num_samples))
  return np.clip(colours, 0.0, 1.0)


def bake(mesh: trimesh.Trimesh, density_fn: numerics.PointFn,
         albedo_fn: numerics.PointFn, texture_size: int, depth: float,
         num_samples: int = 16,
         chunk: int = numerics.DEFAULT_CHUNK) -> TexturedMesh:
  """Unwraps `mesh` and bakes the colour the field shows into a texture.

  Each covered texel's surface point and normal are interpolated from its
  face's corners (barycentric coordinates from `rasterize`; normals from
  the mesh's area-weighted vertex normals, renormalised), and its colour is
  `seen_colours` there. The vertices get the same colour (for PLY), then
  `dilate` pads every chart.

  Args:
    mesh: a closed mesh of the field's surface (`meshing.mesh_from_grid`).
    density_fn, albedo_fn: the field, as in `seen_colours`.
    texture_size: T, the texture's side in texels.
    depth, num_samples, chunk: as in `seen_colours`.

  Returns:
    A TexturedMesh; mesh is a copy of the input with vertex colours.
  """
  start = time.time()
  uv_to_vertex, uv_faces, uv = unwrap(mesh.vertices, mesh.faces, texture_size)
  face, bary = rasterize(uv, uv_faces, texture_size)
  covered = face >= 0
  logging.info('UV atlas: %d faces, %d UV vertices (%d on seams), %.0f%% of '
               'the %d^2 texture covered, in %.1f s; baking %d texels x %d '
               'samples.', len(uv_faces), len(uv), len(uv) - len(mesh.vertices),
               100.0 * covered.mean(), texture_size, time.time() - start,
               covered.sum(), num_samples)
  start = time.time()
  corners = uv_to_vertex[uv_faces[face[covered]]]  # [K, 3] mesh vertices
  weights = bary[covered][..., None]
  vertices = np.asarray(mesh.vertices, np.float32)
  vertex_normals = np.asarray(mesh.vertex_normals, np.float32)
  points = np.sum(weights * vertices[corners], axis=1)
  normals = np.sum(weights * vertex_normals[corners], axis=1)
  normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
  texture = np.zeros((texture_size, texture_size, 3), np.float32)
  texture[covered] = seen_colours(density_fn, albedo_fn, points, normals,
                                  depth, num_samples, chunk)
  texture = dilate(texture, covered)

  vertex_colours = seen_colours(density_fn, albedo_fn, vertices,
                                vertex_normals, depth, num_samples, chunk)
  rgb = np.round(vertex_colours * 255.0).astype(np.uint8)
  rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], -1)
  coloured = mesh.copy()
  coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=rgba)
  logging.info('Texture baked in %.1f s.', time.time() - start)
  return TexturedMesh(mesh=coloured, uv_to_vertex=uv_to_vertex,
                      uv_faces=uv_faces, uv=uv, texture=texture)
