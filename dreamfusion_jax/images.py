"""Images and videos: PNG, GIF and H.264 MP4 writing, and display helpers.

Images are float32 in [0, 1], [..., H, W, 3] (DESIGN.md section 4); this
module turns them into files (atomically, `files.atomic_path`), tiles frames
into contact sheets and makes depth and normals displayable.
"""

import os
from typing import List, Optional

import imageio
import numpy as np
from PIL import Image

from dreamfusion_jax import files


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
  """The sRGB transfer function's inverse, elementwise on [0, 1] values."""
  c = np.asarray(c, np.float64)
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)




def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] -> uint8, same shape."""
  images = np.nan_to_num(np.asarray(images, np.float32))
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_even(frames: np.ndarray) -> np.ndarray:
  # yuv420p halves the chroma resolution, so H.264 needs even sizes.
  _, h, w, _ = frames.shape
  return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')


def write_video(frames, path: str, fps: int = 30) -> str:
  """Writes frames [N, H, W, 3] (float in [0, 1]) as an H.264 mp4.

  The pixel format is yuv420p, which every player decodes; an odd height or
  width is padded by one edge row or column.

  Returns:
    path.
  """
  frames = _pad_even(to_uint8(frames))
  # macro_block_size=1 stops imageio from resizing frames to multiples of 16.
  with files.atomic_path(path) as tmp, imageio.v2.get_writer(
      tmp, format='FFMPEG', mode='I', fps=fps, codec='libx264',
      pixelformat='yuv420p', quality=8, macro_block_size=1,
      ffmpeg_log_level='error') as writer:
    for frame in frames:
      writer.append_data(frame)
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
  with files.atomic_path(path) as tmp:
    images[0].save(tmp, save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0)
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
  with files.atomic_path(path) as tmp:
    Image.fromarray(to_uint8(image)).save(tmp)
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
