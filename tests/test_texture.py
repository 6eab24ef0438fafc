"""Tests of the UV atlas, texture baking and mesh files (CPU, analytic fields).

A ball whose albedo changes along every axis is meshed, unwrapped and baked;
the files are read back by trimesh (and, where Node and the Khronos glTF
validator are installed, validated) and the texture is looked up at the
reloaded UVs, so a flipped v, a swapped face order or a mis-mapped texel
shows up as a wrong colour.
"""

import io
import json
import os
import shutil
import struct
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import trimesh

from dreamfusion_jax import mesh_files
from dreamfusion_jax import meshing
from dreamfusion_jax import texture

CENTRE = np.array([0.2, -0.1, 0.05], np.float32)
RADIUS = 0.5
SIZE = 256
GRID = 40


def ball_density(points):
  r = jnp.linalg.norm(points - CENTRE, axis=-1)
  return 50.0 * jax.nn.sigmoid(60.0 * (RADIUS - r))


def albedo(points):
  """A colour that changes along every axis: [N, 3] -> [N, 3] in [0, 1]."""
  return jnp.clip(0.5 + 0.4 * (points - CENTRE) / RADIUS, 0.0, 1.0)


def on_sphere(points):
  offset = np.asarray(points) - CENTRE
  return CENTRE + RADIUS * offset / np.linalg.norm(offset, axis=-1,
                                                   keepdims=True)


@pytest.fixture(scope='module')
def ball():
  grid = meshing.density_grid(ball_density, GRID, 1.0)
  return meshing.mesh_from_grid(grid, 1.0, threshold=25.0)


@pytest.fixture(scope='module')
def baked(ball):
  return texture.bake(ball, ball_density, albedo, SIZE,
                      depth=2.0 * 2.0 / (GRID - 1))


@pytest.fixture(scope='module')
def written(baked, tmp_path_factory):
  out = tmp_path_factory.mktemp('mesh')
  return mesh_files.write_textured_mesh(baked, str(out))


def bilinear(image, uv):
  """Texture lookup at UVs [N, 2] (v up), as a viewer's bilinear filter."""
  size = image.shape[0]
  x = uv[:, 0] * size - 0.5
  y = (1.0 - uv[:, 1]) * size - 0.5
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]

  def at(r, c):
    return image[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)]

  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
          fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def face_samples(faces, num=2000, seed=0):
  """Random faces and barycentric coordinates inside them."""
  rng = np.random.default_rng(seed)
  face = rng.integers(0, len(faces), num)
  bary = rng.dirichlet(np.ones(3), num)
  return face, bary


def test_atlas_keeps_faces_and_puts_every_face_in_the_unit_square(ball):
  uv_to_vertex, uv_faces, uv = texture.unwrap(ball.vertices, ball.faces, SIZE)
  np.testing.assert_array_equal(uv_to_vertex[uv_faces], ball.faces)
  assert uv.min() >= 0.0 and uv.max() <= 1.0
  corners = uv[uv_faces]
  e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
  area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
  # Faces xatlas skips (exact slivers) may share a point, but marching
  # cubes' near-slivers must be charted: almost every face has UV area.
  assert np.mean(area > 0) > 0.99
  # Charts do not overlap: each face's texels belong to it alone, so the
  # charted area is at most the square's.
  assert 0.3 < area.sum() / 2 <= 1.0


def test_every_point_of_every_face_reads_a_baked_texel(ball):
  _, uv_faces, uv = texture.unwrap(ball.vertices, ball.faces, SIZE)
  face_map, bary_map = texture.rasterize(uv, uv_faces, SIZE)
  face, bary = face_samples(uv_faces, 20000)
  p = np.einsum('nk,nkd->nd', bary, uv[uv_faces[face]])
  col = np.clip(np.floor(p[:, 0] * SIZE), 0, SIZE - 1).astype(int)
  row = np.clip(np.floor((1 - p[:, 1]) * SIZE), 0, SIZE - 1).astype(int)
  # The texel holding a point of a face has its centre within half a
  # diagonal of that face, so it is baked, not left to the dilation.
  assert (face_map[row, col] >= 0).all()
  covered = face_map >= 0
  np.testing.assert_allclose(bary_map[covered].sum(-1), 1.0, atol=1e-5)
  assert (bary_map >= 0).all()


def test_baked_texture_shows_the_field_colour_at_the_surface(ball, baked):
  face, bary = face_samples(baked.uv_faces)
  uv = np.einsum('nk,nkd->nd', bary, baked.uv[baked.uv_faces[face]])
  points = np.einsum('nk,nkd->nd', bary, ball.vertices[ball.faces[face]])
  expected = np.asarray(albedo(on_sphere(points)))
  np.testing.assert_allclose(bilinear(baked.texture, uv), expected,
                             atol=0.03)
  assert baked.texture.shape == (SIZE, SIZE, 3)


def test_seen_colour_is_the_surface_s_not_the_empty_space_s():
  # A sharp ball, red up to just outside its surface and blue beyond: a
  # mesh vertex 0.03 outside the surface must still take the surface's red.
  def sharp(points):
    r = jnp.linalg.norm(points - CENTRE, axis=-1)
    return 50.0 * jax.nn.sigmoid(400.0 * (RADIUS - r))

  def two_tone(points):
    inside = jnp.linalg.norm(points - CENTRE, axis=-1) < RADIUS + 0.01
    return jnp.where(inside[:, None], jnp.array([0.9, 0.1, 0.1]),
                     jnp.array([0.1, 0.1, 0.9]))

  normal = np.array([[0.0, 0.6, 0.8]], np.float32)
  outside = CENTRE + (RADIUS + 0.03) * normal
  seen = texture.seen_colours(sharp, two_tone, outside, normal,
                              depth=0.06)
  np.testing.assert_allclose(seen[0], [0.9, 0.1, 0.1], atol=0.02)
  np.testing.assert_allclose(np.asarray(two_tone(outside))[0],
                             [0.1, 0.1, 0.9])


def test_dilation_fills_a_ring_around_each_chart_with_its_colour():
  image = np.zeros((32, 32, 3), np.float32)
  filled = np.zeros((32, 32), bool)
  filled[4:10, 4:10], image[4:10, 4:10] = True, [1.0, 0.0, 0.0]
  filled[20:26, 20:26], image[20:26, 20:26] = True, [0.0, 0.0, 1.0]
  out = texture.dilate(image, filled)
  np.testing.assert_array_equal(out[filled], image[filled])
  # A two-texel ring around each chart takes that chart's colour.
  np.testing.assert_array_equal(out[2:12, 2:12], np.broadcast_to(
      [1.0, 0.0, 0.0], (10, 10, 3)))
  np.testing.assert_array_equal(out[18:28, 18:28], np.broadcast_to(
      [0.0, 0.0, 1.0], (10, 10, 3)))
  # Nothing is left unfilled (black) anywhere.
  assert (out.sum(-1) > 0).all()


def test_files_reload_with_texture_and_uvs(baked, written):
  assert [os.path.basename(p) for p in written] == [
      'mesh.glb', 'mesh.obj', 'mesh.mtl', 'texture.png', 'mesh.ply']
  glb = trimesh.load(written[0], force='mesh', process=False)
  assert glb.visual.kind == 'texture'
  assert len(glb.vertices) == len(baked.uv)
  assert glb.visual.material.baseColorTexture.size == (SIZE, SIZE)
  np.testing.assert_allclose(glb.visual.uv, baked.uv, atol=1e-6)
  # The texture read back at the reloaded UVs is the field's colour.
  image = np.asarray(glb.visual.material.baseColorTexture.convert('RGB'))
  face, bary = face_samples(glb.faces)
  uv = np.einsum('nk,nkd->nd', bary, glb.visual.uv[glb.faces[face]])
  points = np.einsum('nk,nkd->nd', bary, glb.vertices[glb.faces[face]])
  np.testing.assert_allclose(bilinear(image / 255.0, uv),
                             np.asarray(albedo(on_sphere(points))),
                             atol=0.03)

  obj = trimesh.load(written[1], force='mesh', process=False)
  assert obj.visual.kind == 'texture'
  assert obj.visual.material.image.size == (SIZE, SIZE)
  assert obj.visual.uv.min() >= 0 and obj.visual.uv.max() <= 1
  ply = trimesh.load(written[4], process=False)
  assert ply.visual.kind == 'vertex'
  assert ply.is_watertight
  np.testing.assert_allclose(
      ply.visual.vertex_colors[:, :3] / 255.0,
      np.asarray(albedo(on_sphere(ply.vertices))), atol=0.03)


def test_obj_shares_positions_across_seams(baked, written):
  text = open(written[1]).read()
  assert text.startswith('mtllib mesh.mtl\nusemtl albedo\n')
  assert 'map_Kd texture.png' in open(written[2]).read()
  v = [line for line in text.splitlines() if line.startswith('v ')]
  vt = [line for line in text.splitlines() if line.startswith('vt ')]
  assert len(v) == len(baked.mesh.vertices) < len(vt) == len(baked.uv)
  faces = np.array([[[int(i) for i in c.split('/')] for c in line.split()[1:]]
                    for line in text.splitlines() if line.startswith('f ')])
  np.testing.assert_array_equal(faces[..., 0] - 1, baked.mesh.faces)
  np.testing.assert_array_equal(faces[..., 1] - 1, baked.uv_faces)


def _glb_chunks(path):
  data = open(path, 'rb').read()
  magic, version, length = struct.unpack('<4sII', data[:12])
  assert (magic, version, length) == (b'glTF', 2, len(data))
  chunks, offset = [], 12
  while offset < len(data):
    size, kind = struct.unpack('<I4s', data[offset:offset + 8])
    assert size % 4 == 0  # Chunks are 4-byte aligned.
    chunks.append((kind, data[offset + 8:offset + 8 + size]))
    offset += 8 + size
  assert offset == len(data)
  return chunks


def test_glb_layout_and_required_fields(baked, written):
  """The glTF 2.0 spec's GLB layout and the fields a viewer needs."""
  chunks = _glb_chunks(written[0])
  assert [kind for kind, _ in chunks] == [b'JSON', b'BIN\x00']
  gltf = json.loads(chunks[0][1])
  binary = chunks[1][1]
  assert gltf['asset']['version'] == '2.0'
  assert gltf['buffers'][0]['byteLength'] <= len(binary)
  (primitive,) = gltf['meshes'][0]['primitives']
  accessors = gltf['accessors']
  attributes = primitive['attributes']
  assert {'POSITION', 'NORMAL', 'TEXCOORD_0'} <= set(attributes)
  for name in ('POSITION', 'NORMAL', 'TEXCOORD_0'):
    assert accessors[attributes[name]]['count'] == len(baked.uv)
  assert 'min' in accessors[attributes['POSITION']]  # Required by the spec.
  assert accessors[primitive['indices']]['count'] == 3 * len(baked.uv_faces)
  for view in gltf['bufferViews']:
    assert view.get('byteOffset', 0) + view['byteLength'] <= len(binary)
  material = gltf['materials'][primitive['material']]
  base = material['pbrMetallicRoughness']
  assert base['metallicFactor'] == 0.0
  image = gltf['images'][gltf['textures'][base['baseColorTexture']['index']]
                         ['source']]
  assert image['mimeType'] == 'image/png'
  view = gltf['bufferViews'][image['bufferView']]
  start = view.get('byteOffset', 0)
  png = Image.open(io.BytesIO(binary[start:start + view['byteLength']]))
  assert png.size == (SIZE, SIZE)


def _validator_root():
  if not shutil.which('node') or not shutil.which('npm'):
    return None
  root = subprocess.run(['npm', 'root', '-g'], capture_output=True,
                        text=True).stdout.strip()
  return root if os.path.isdir(os.path.join(root, 'gltf-validator')) else None


@pytest.mark.skipif(_validator_root() is None, reason=(
    'the Khronos glTF validator is not installed: '
    'npm install -g gltf-validator'))
def test_khronos_validator_finds_no_errors_or_warnings(written):
  script = ("const v = require('gltf-validator');"
            "const d = new Uint8Array(require('fs').readFileSync("
            "process.argv[1]));"
            "v.validateBytes(d).then(r => console.log(JSON.stringify("
            "r.issues)));")
  run = subprocess.run(['node', '-e', script, written[0]], check=True,
                       capture_output=True, text=True,
                       env=dict(os.environ, NODE_PATH=_validator_root()))
  issues = json.loads(run.stdout)
  assert issues['numErrors'] == 0 and issues['numWarnings'] == 0, issues


def test_simplify_decimates_and_smoothing_removes_the_staircase(ball):
  smaller = meshing.simplify(ball, target_faces=len(ball.faces) // 4)
  assert abs(len(smaller.faces) - len(ball.faces) // 4) <= 0.05 * len(
      ball.faces)
  assert smaller.is_watertight
  np.testing.assert_allclose(smaller.volume, ball.volume, rtol=0.02)

  def bumpiness(mesh):
    r = np.linalg.norm(np.asarray(mesh.vertices) - CENTRE, axis=-1)
    return r.std()

  # A near-binary field puts marching cubes' vertices on a staircase.
  blocky = meshing.mesh_from_grid(meshing.density_grid(
      lambda p: 50.0 * jax.nn.sigmoid(1000.0 * (
          RADIUS - jnp.linalg.norm(p - CENTRE, axis=-1))), GRID, 1.0),
                                  1.0, threshold=25.0)
  smooth = meshing.simplify(blocky, smooth_iterations=10)
  assert bumpiness(smooth) < 0.7 * bumpiness(blocky)
  np.testing.assert_allclose(smooth.volume, blocky.volume, rtol=0.02)
  assert len(smooth.faces) == len(blocky.faces)
