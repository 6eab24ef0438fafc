"""Tests of dreamfusion_jax.export on analytic fields (CPU, no downloads)."""

import os
import re

import imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from configs import default as default_config
from dreamfusion_jax import cameras
from dreamfusion_jax import errors
from dreamfusion_jax import export
from dreamfusion_jax import images
from dreamfusion_jax import meshing
from dreamfusion_jax import render
from dreamfusion_jax import shading
from dreamfusion_jax.nerf import field as field_lib

# An off-centre ball, so that a swapped, flipped or shifted axis in the
# grid-to-world mapping moves the mesh away from where the field puts it.
CENTRE = np.array([0.2, -0.1, 0.05], np.float32)
RADIUS = 0.5


def ball_density(points, peak=50.0, sharpness=20.0, centre=CENTRE,
                 radius=RADIUS):
  """peak * sigmoid(sharpness (radius - |x - centre|)): [N, 3] -> [N]."""
  r = jnp.linalg.norm(points - centre, axis=-1)
  return peak * jax.nn.sigmoid(sharpness * (radius - r))


def exp_density(points, slope):
  """exp(slope (RADIUS - |x - CENTRE|)), like an exp-activated field."""
  r = jnp.linalg.norm(points - CENTRE, axis=-1)
  return jnp.exp(jnp.minimum(slope * (RADIUS - r), 40.0))


def albedo(points):
  """A colour that changes along every axis: [N, 3] -> [N, 3] in [0, 1]."""
  return jnp.clip(0.5 + 0.4 * (points - CENTRE) / RADIUS, 0.0, 1.0)


def radii(mesh):
  return np.linalg.norm(np.asarray(mesh.vertices) - CENTRE, axis=-1)


@pytest.fixture(scope='module')
def ball_mesh():
  # The half-maximum 25 of a 50 sigmoid ball is exactly the sphere |x - c| = r.
  return meshing.extract_mesh(ball_density, albedo, resolution=64, bound=1.0,
                             threshold=25.0)


def test_density_grid_samples_grid_vertices_in_xyz_order():
  # 11^3 = 1331 points in chunks of 100: the last chunk is padded.
  coeffs = jnp.array([1.0, 10.0, 100.0])
  fn = jax.tree_util.Partial(lambda c, p: p @ c, coeffs)
  grid = meshing.density_grid(fn, resolution=11, bound=0.5, chunk=100)
  x = meshing.grid_coordinates(11, 0.5)
  expected = (x[:, None, None] + 10 * x[None, :, None] +
              100 * x[None, None, :])
  assert grid.shape == (11, 11, 11)
  np.testing.assert_allclose(grid, expected, atol=1e-4)
  assert x[0] == -0.5 and x[-1] == 0.5


def test_ball_mesh_has_the_ball_radius_and_is_watertight(ball_mesh):
  r = radii(ball_mesh)
  assert abs(r.mean() - RADIUS) < 0.02 * RADIUS
  assert r.std() < 0.01
  assert ball_mesh.is_watertight
  # Outward winding: positive volume close to the ball's.
  np.testing.assert_allclose(ball_mesh.volume, 4 / 3 * np.pi * RADIUS ** 3,
                             rtol=0.03)
  np.testing.assert_allclose(ball_mesh.vertices.mean(axis=0), CENTRE,
                             atol=0.01)


def test_mesh_closes_where_the_object_leaves_the_grid():
  # The ball pokes out of [-0.5, 0.5]^3; the export is still closed.
  mesh = meshing.extract_mesh(ball_density, albedo, 24, bound=0.5,
                             threshold=25.0, remove_floaters=False)
  assert mesh.is_watertight
  assert mesh.volume > 0


def _outline_radius(profile):
  """Radius of a ball's outline in renders, for density profile(r).

  A ray passing the centre at distance b is half opaque when its optical
  depth, the density integrated along the chord, reaches ln 2; that b is
  the radius of the outline any render of the ball shows.
  """
  b = np.linspace(RADIUS - 0.2, RADIUS + 0.3, 2001)[:, None]
  s = np.linspace(-1.5, 1.5, 6001)[None, :]
  depth = profile(np.sqrt(b ** 2 + s ** 2)).sum(axis=1) * (s[0, 1] - s[0, 0])
  return float(b[np.argmin(np.abs(depth - np.log(2.0))), 0])


@pytest.mark.parametrize('kind, param', [('sigmoid', 60.0), ('exp', 20.0),
                                         ('exp', 50.0)])
def test_auto_threshold_gives_the_mesh_the_rendered_outline(kind, param):
  # A soft ball is most opaque along grazing rays, so its outline lies
  # outside the point where a ray aimed at its centre turns half opaque
  # (exp, slope 20: outline at r = 0.47, that point at 0.37).
  if kind == 'sigmoid':
    fn = lambda p: ball_density(p, sharpness=param)
    profile = lambda r: 50.0 / (1.0 + np.exp(-param * (RADIUS - r)))
  else:
    fn = lambda p: exp_density(p, param)
    profile = lambda r: np.exp(np.minimum(param * (RADIUS - r), 40.0))
  outline = _outline_radius(profile)
  for resolution in (48, 96):
    mesh = meshing.extract_mesh(fn, albedo, resolution, 1.0)
    spacing = 2.0 / (resolution - 1)
    # Columns of the grid are a spacing apart: the outline is matched to
    # within about half of one.
    assert abs(radii(mesh).mean() - outline) < 0.6 * spacing, (resolution,
                                                               outline)


def test_auto_threshold_meshes_a_field_that_is_never_opaque():
  # Peak optical depth along any ray is ~0.3 < ln 2: the fallback rule.
  haze = lambda p: 0.5 * jnp.exp(-jnp.sum((p - CENTRE) ** 2, axis=-1) / 0.1)
  grid = meshing.density_grid(haze, 24, 1.0)
  threshold = meshing.choose_threshold(grid, 1.0)
  assert 0.0 < threshold < 0.5
  assert meshing.mesh_from_grid(grid, 1.0).is_watertight


def test_floater_removal_drops_a_small_separate_blob():
  def two_pieces(p):
    body = ball_density(p, centre=np.zeros(3, np.float32), radius=0.4)
    blob = ball_density(p, centre=np.array([0.75, 0.0, 0.0], np.float32),
                        radius=0.06, sharpness=60.0)
    return jnp.maximum(body, blob)

  kept = meshing.extract_mesh(two_pieces, albedo, 48, 1.0, threshold=25.0,
                             remove_floaters=False)
  cleaned = meshing.extract_mesh(two_pieces, albedo, 48, 1.0, threshold=25.0)
  assert len(kept.split(only_watertight=False)) == 2
  assert len(cleaned.split(only_watertight=False)) == 1
  assert np.linalg.norm(cleaned.vertices, axis=-1).max() < 0.45
  assert cleaned.is_watertight
  assert len(cleaned.visual.vertex_colors) == len(cleaned.vertices)


def test_no_surface_raises_with_a_threshold_that_works():
  faint = lambda p: 2.0 * jnp.exp(-jnp.sum(p * p, axis=-1) / 0.1)
  with pytest.raises(errors.UserError) as info:
    # 33 vertices per axis put one at the peak, so the max is exactly 2.
    meshing.extract_mesh(faint, albedo, 33, 1.0, threshold=10.0)
  message = str(info.value)
  assert 'max density is 2' in message
  suggested = float(
      re.search(r'--config\.export\.mesh_threshold=([0-9.e+-]+)\.$',
                message).group(1))
  mesh = meshing.extract_mesh(faint, albedo, 33, 1.0, threshold=suggested)
  assert len(mesh.faces) > 0


def test_constant_field_raises_user_error():
  with pytest.raises(errors.UserError, match='constant'):
    meshing.extract_mesh(lambda p: jnp.zeros(p.shape[:-1]), albedo, 16, 1.0)


def smooth_frames(n, h, w):
  t = np.arange(n)[:, None, None, None] / n
  y = np.linspace(0, 1, h)[None, :, None, None]
  x = np.linspace(0, 1, w)[None, None, :, None]
  rgb = np.concatenate([x + 0 * y + 0 * t, y + 0 * x + 0 * t,
                        (t + 0 * x + 0 * y)], axis=-1)
  return rgb.astype(np.float32)


# imageio-ffmpeg starts ffmpeg with subprocess, which warns about forking a
# multithreaded (JAX) process; the child execs ffmpeg at once, so it is safe.
_IGNORE_FORK = pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')


@_IGNORE_FORK
def test_video_reads_back_with_frame_count_and_even_size(tmp_path):
  frames = smooth_frames(6, 15, 22)  # An odd height is padded to 16.
  path = images.write_video(frames, str(tmp_path / 'turntable.mp4'), fps=12)
  reader = imageio.v2.get_reader(path)
  meta = reader.get_meta_data()
  # Iterate: list(reader) would preallocate the reader's len(), which is
  # unknown (infinite) for a stream.
  read = np.stack([f for f in reader]).astype(np.float32) / 255.0
  reader.close()
  assert meta['codec'] == 'h264'
  assert read.shape == (6, 16, 22, 3)
  assert np.abs(read[:, :15] - frames).mean() < 0.05
  assert not any(name.endswith('.tmp.mp4') for name in os.listdir(tmp_path))


def test_gif_and_contact_sheet(tmp_path):
  frames = smooth_frames(6, 40, 60)
  path = images.write_gif(frames, str(tmp_path / 'turntable.gif'), fps=10,
                          max_size=30)
  gif = imageio.v2.mimread(path)
  assert len(gif) == 6 and gif[0].shape[:2] == (20, 30)
  sheet = images.contact_sheet(frames, num=3, columns=2)
  assert sheet.shape == (80, 120, 3)
  np.testing.assert_array_equal(sheet[:40, :60], frames[0])
  np.testing.assert_array_equal(sheet[:40, 60:], frames[2])
  np.testing.assert_array_equal(sheet[40:, 60:], 1.0)
  images.write_png(sheet, str(tmp_path / 'sheet.png'))
  assert imageio.v2.imread(str(tmp_path / 'sheet.png')).shape == (80, 120, 3)


def test_normals_shown_in_camera_space_and_composited():
  # A camera on +x looking at the origin: right = +y, up = +z, back = +x.
  rotation = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  normals = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # [1, 2, 3]
  opacity = np.array([[1.0, 0.0]])
  rgb = images.normals_to_rgb(normals, opacity, rotation, background=1.0)
  np.testing.assert_allclose(rgb[0, 0], [0.5, 0.5, 1.0])  # Faces camera.
  np.testing.assert_allclose(rgb[0, 1], [1.0, 1.0, 1.0])  # Background.


def test_colorize_depth_is_bright_near_and_uses_one_range():
  depth = np.array([[[1.0, 2.0]], [[1.5, 1.5]]])  # [2 frames, 1, 2]
  opacity = np.ones_like(depth)
  rgb = images.colorize_depth(depth, opacity, near=1.0, far=2.0)
  assert rgb.shape == (2, 1, 2, 3)
  assert rgb.min() >= 0.0 and rgb.max() <= 1.0
  brightness = rgb.sum(-1)
  assert brightness[0, 0, 0] > brightness[1, 0, 0] > brightness[0, 0, 1]
  np.testing.assert_allclose(rgb[1, 0, 0], rgb[1, 0, 1])


def _tiny_config():
  config = default_config.get_config()
  config.nerf.num_frequencies = 2
  config.nerf.mlp_width = 16
  config.nerf.mlp_blocks = 1
  config.nerf.background = 'constant'
  config.render.num_samples = 8
  config.export.num_frames = 2
  config.export.resolution = 8
  config.export.mesh_resolution = 12
  config.export.texture_size = 32
  return config


@pytest.fixture(scope='module')
def tiny_nerf():
  config = _tiny_config()
  model = field_lib.make_model(config)
  # Jitted: one compile instead of one per eager op (the test's main cost).
  params = jax.jit(field_lib.init_params, static_argnums=1)(
      jax.random.key(0), model)
  return model, params


@_IGNORE_FORK
def test_export_all_writes_every_file_and_says_what_it_does(
    tmp_path, tiny_nerf, caplog):
  model, params = tiny_nerf
  config = _tiny_config()
  with caplog.at_level('INFO'):
    paths = export.export_all(config, model, params, str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  expected = sorted([f'{n}.{e}' for n in ('rgb', 'textureless', 'normals',
                                          'depth')
                     for e in ('mp4', 'gif', 'png')] +
                    ['mesh.glb', 'mesh.obj', 'mesh.mtl', 'texture.png',
                     'mesh.ply'])
  assert names == expected
  assert sorted(os.listdir(tmp_path)) == expected
  reader = imageio.v2.get_reader(str(tmp_path / 'rgb.mp4'))
  assert len([frame for frame in reader]) == 2
  reader.close()
  glb = trimesh.load(str(tmp_path / 'mesh.glb'), force='mesh')
  assert glb.visual.material.baseColorTexture.size == (32, 32)
  log = caplog.text
  # The estimate comes first, with the keys that shorten it; then counts.
  assert log.index('estimated') < log.index('frame 1/2')
  assert '--config.export.texture_size' in log
  for stage in ('frame 2/2', 'Density grid: 12^3', 'UV atlas',
                'Texture baked'):
    assert stage in log


def test_textureless_frames_from_one_pass_equal_a_textureless_render(
    tiny_nerf):
  model, params = tiny_nerf
  config = _tiny_config()
  cams = cameras.orbit_cameras(2, 20.0, 1.3, 1.0)
  lit = shading.lambertian(ambient=0.2, diffuse=0.7, textureless=True)
  one_pass = render.render_cameras(model, params, cams, 8, config.render)
  two_pass = render.render_cameras(model, params, cams, 8, config.render, lit)
  np.testing.assert_allclose(render.textureless_rgb(one_pass, 0.2, 0.7),
                             two_pass['rgb'], atol=1e-5)
  assert one_pass['opacity'].max() > 0.1  # The blob is seen.


@pytest.mark.parametrize('key, value, words', [
    ('texture_size', 8, 'export.texture_size = 8 must be an integer'),
    ('texture_size', 10000, 'must be an integer from 16 to 8192'),
    ('target_faces', -1, 'export.target_faces = -1 must be 0'),
    ('smooth_iterations', -3, 'export.smooth_iterations = -3 must be 0'),
    ('mesh_resolution', 1, 'export.mesh_resolution = 1 must be'),
    ('num_frames', 0, 'export.num_frames = 0 must be a positive integer'),
])
def test_bad_export_keys_get_one_sentence(key, value, words):
  config = default_config.get_config()
  config.export[key] = value
  with pytest.raises(errors.UserError, match=re.escape(words)) as info:
    export.validate(config.export)
  message = str(info.value)
  assert message.endswith('.') and not re.search(r'\. [A-Z]', message)


def test_unwritable_export_folder_is_one_sentence(tmp_path, tiny_nerf):
  model, params = tiny_nerf
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  with pytest.raises(errors.UserError, match='cannot be written'):
    export.export_all(_tiny_config(), model, params, str(blocker / 'export'))
  assert blocker.read_text() == 'not a folder'
