r"""DreamFusion with Stable Diffusion on one GPU (the peers' recipe).

Where the paper's Imagen-specific values do not carry over to Stable
Diffusion, this follows threestudio's dreamfusion-sd (PAPER_NOTES.md):
cameras further out with a 40-70 degree field of view, elevation up to 45
degrees, a hash-grid field, 2000 albedo-only steps, Adam at 1e-2 and 10,000
steps. Everything else is configs/default.py, i.e. the paper.

  python experiments/train.py --config=configs/dreamfusion_sd.py \
      --workdir=/tmp/corgi --config.prompt="a DSLR photo of a corgi"

The weights are not downloaded during training: guidance.model must name a
hub id already in the Hugging Face cache (`huggingface-cli download
stable-diffusion-v1-5/stable-diffusion-v1-5`) or a local folder with the
diffusers layout. Only CompVis/stable-diffusion-v1-4 publishes a Flax
branch: --config.guidance.model=CompVis/stable-diffusion-v1-4
--config.guidance.revision=flax. Other ids load their PyTorch safetensors.
"""

import math

import ml_collections

from configs import default


def _focal_ratio(fov_degrees: float) -> float:
  """Focal length in units of the image width for a horizontal field of view."""
  return 1.0 / (2.0 * math.tan(math.radians(fov_degrees) / 2.0))


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  config.prompt = 'a DSLR photo of a hamburger'
  config.num_steps = 10000

  # threestudio's ranges: further cameras (outside render.scene_radius = 1.4)
  # with a 40-70 degree field of view, no views from above 45 degrees.
  config.camera.elevation_range = (-10.0, 45.0)
  config.camera.distance_range = (1.5, 2.0)
  config.camera.focal_range = (_focal_ratio(70.0), _focal_ratio(40.0))
  config.camera.eval_distance = 1.75  # Middle of the training distances.

  config.render.resolution = 64
  config.render.num_samples = 64

  # Instant-NGP hash grid: trains much faster than the paper's MLP.
  config.nerf.field = 'hashgrid'
  config.nerf.hash_levels = 16
  config.nerf.hash_log2_table_size = 19
  config.nerf.hash_max_resolution = 2048
  # Chunks do not help a hash grid: each chunk's backward scatters into a
  # gradient the size of the whole tables (benchmark_render.py: 1.03x).
  config.render.field_chunk = 0

  config.shading.albedo_steps = 2000

  config.guidance.model = 'stable-diffusion-v1-5/stable-diffusion-v1-5'
  config.guidance.revision = ''
  config.guidance.dtype = 'auto'
  config.guidance.scale = 100.0  # eps_u + 100 (eps_c - eps_u).
  config.guidance.t_min = 0.02
  config.guidance.t_max = 0.98

  config.loss.orientation_weight_end = 1e-2
  # stable-dreamfusion: the opacity loss "tends to make the NeRF disappear";
  # a small entropy term sharpens the opacity instead.
  config.loss.opacity_weight = 0.0
  config.loss.entropy_weight = 1e-3

  # threestudio: Adam at 1e-2 for the hash tables and the MLPs alike.
  config.optim.learning_rate = 1e-2
  config.optim.hashgrid_lr_multiplier = 1.0
  config.optim.warmup_steps = 100
  config.optim.final_learning_rate = 1e-3

  return config
