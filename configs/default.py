"""Every configuration field, grouped, each with a one-line comment.

Other configs import this module and override what they change. Library code
reads `config.x` directly; a field that is not here does not exist.

This default is the Stable Diffusion setting at the paper's values where they
apply. It needs the model's weights (a hub id in the local cache or a local
folder) and, in practice, an accelerator:

  python experiments/train.py --config=configs/default.py --workdir=/tmp/df \
      --config.prompt="a DSLR photo of a corgi"
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.prompt = 'a DSLR photo of a hamburger'  # Text the object should match.
  config.negative_prompt = ''  # Replaces the empty prompt in guidance if set.
  config.seed = 0  # Base PRNG seed; every step folds in its step index.
  config.num_steps = 10000  # Optimisation steps.
  config.batch_per_device = 1  # Views rendered per device per step.
  config.multihost = False  # Call jax.distributed.initialize() first.
  # Many objects in one run (prompts x seeds, trained together; one folder
  # per object under --workdir). Any of the three set makes a batch run.
  config.prompts = ()  # Prompts of a batch run; prompt is then unused.
  config.prompts_file = ''  # A file of prompts, one per line (adds to above).
  config.seeds = ()  # Seeds of every prompt in a batch run; () = (seed,).

  # Camera and light sampling (paper appendix A.2). Angles in degrees.
  config.camera = camera = ml_collections.ConfigDict()
  camera.elevation_range = (-10.0, 90.0)  # Elevation above the xy-plane.
  camera.uniform_area_prob = 0.5  # Share of elevations uniform in area.
  camera.azimuth_range = (0.0, 360.0)  # Azimuth from +x towards +y.
  camera.distance_range = (1.0, 1.5)  # Camera distance from the origin.
  camera.focal_range = (0.7, 1.35)  # Focal length in units of image width.
  camera.position_jitter = 0.1  # Position + U(-a, a)^3.
  camera.target_jitter = 0.2  # Look-at point ~ N(0, a^2 I).
  camera.up_jitter = 0.02  # Up vector + N(0, a^2 I).
  camera.light_direction_std = 1.0  # Light direction ~ N(camera pos, a^2 I).
  camera.light_distance_range = (0.8, 1.5)  # Light distance from origin.
  camera.eval_elevation = 20.0  # Elevation of preview/turntable orbits.
  camera.eval_distance = 1.3  # Distance of preview/turntable orbits.
  camera.eval_focal = 1.0  # Focal length (x width) of preview orbits.

  # Volume rendering.
  config.render = render = ml_collections.ConfigDict()
  render.resolution = 64  # Square render size in pixels.
  render.num_samples = 64  # Stratified samples per ray (and in eval renders).
  render.scene_radius = 1.4  # Bounding sphere; samples lie inside it.
  render.chunk = 8192  # Rays per chunk in full-image (eval) renders.
  # Training samples: 'occupancy' places occupancy_samples per ray in the
  # cells of an occupancy grid where density can be (Instant-NGP's empty-space
  # skipping, static shapes); 'stratified' spreads num_samples across the
  # whole bound. With a quarter of the samples the toy table stayed within
  # seed noise (README), counting the grid's updates 3.2x fewer evaluations.
  render.sampler = 'occupancy'
  render.occupancy_samples = 16  # Samples per ray with the occupancy grid.
  render.occupancy_resolution = 64  # Grid cells per axis over the bound.
  render.occupancy_threshold = 0.1  # Density above which a cell is occupied.
  # Per update, how much of an emptied cell's density is remembered.
  # Instant-NGP's 0.95 kept the grid full for 700 of the toy's 1000 steps.
  render.occupancy_decay = 0.5
  render.occupancy_update_every = 16  # Steps between grid updates.
  render.occupancy_candidates = 128  # Bins per ray where it is looked up.
  # Normals: 'autodiff' (a VJP), 'central' or 'forward' finite differences.
  render.normals = 'autodiff'
  render.normal_eps = 0.01  # Finite-difference step (scene units).
  # Points per field evaluation in training (0: all at once). Chunks are
  # recomputed in the backward pass and stay in cache: the paper's MLP
  # render with normals ran 3.9x faster (README, benchmark_render.py).
  render.field_chunk = 8192

  # The neural field.
  config.nerf = nerf = ml_collections.ConfigDict()
  nerf.field = 'mlp'  # 'mlp' (the paper's) or 'hashgrid' (Instant-NGP).
  nerf.num_frequencies = 8  # Positional-encoding octaves (mlp field).
  nerf.mlp_width = 128  # Hidden units of the mlp field.
  nerf.mlp_blocks = 5  # Residual blocks of the mlp field.
  nerf.hash_levels = 16  # Hash-grid resolution levels.
  nerf.hash_features = 2  # Features per hash-grid entry.
  nerf.hash_log2_table_size = 19  # log2 entries per level.
  nerf.hash_min_resolution = 16  # Coarsest grid resolution.
  nerf.hash_max_resolution = 2048  # Finest grid resolution.
  nerf.hash_mlp_width = 64  # Hidden units of the hash-grid decoder.
  nerf.hash_mlp_layers = 2  # Hidden layers of the hash-grid decoder.
  # Coarse to fine: levels trained at first (0: all from the start), then
  # one more every hash_level_every_steps from hash_level_start_step.
  nerf.hash_start_levels = 0
  nerf.hash_level_start_step = 0  # Step at which levels start being added.
  nerf.hash_level_every_steps = 500  # Steps between added levels.
  nerf.density_activation = 'exp'  # 'exp' (paper) or 'softplus'.
  # Blob added to the raw density: 'paper' lambda exp(-|x|^2 / 2 s^2) or
  # 'magic3d' lambda (1 - |x| / s), lambda = blob_density, s = blob_radius.
  nerf.blob = 'paper'
  nerf.blob_density = 5.0  # Density blob peak lambda_tau (pre-activation).
  nerf.blob_radius = 0.2  # Density blob width sigma_tau.
  nerf.background = 'mlp'  # 'mlp' of the view direction or 'constant'.
  nerf.background_frequencies = 4  # Encoding octaves of the background MLP.
  nerf.background_width = 64  # Hidden units of the background MLP.
  nerf.background_color = (1.0, 1.0, 1.0)  # Colour if background='constant'.

  # Shading mix (paper 3.1): albedo-only warm-up, then lit / textureless.
  config.shading = shading = ml_collections.ConfigDict()
  shading.albedo_steps = 1000  # Albedo-only renders before this step.
  shading.lit_prob = 0.75  # After warm-up, P(Lambertian shading).
  shading.textureless_prob = 0.5  # P(textureless | lit).
  shading.ambient = 0.1  # Ambient light l_a when lit.
  shading.diffuse = 0.9  # Diffuse light l_rho when lit.
  # P(a training view's background is a random solid colour instead of the
  # background MLP's); 0 in the paper.
  shading.random_background_prob = 0.0
  # Colours to draw from; (): uniform in [0, 1]^3.
  shading.random_background_colors = ()

  # The frozen 2D diffusion prior and SDS.
  config.guidance = guidance = ml_collections.ConfigDict()
  # Hub id, local folder, or 'toy'.
  guidance.model = 'stable-diffusion-v1-5/stable-diffusion-v1-5'
  guidance.revision = ''  # Hub branch ('flax' exists for CompVis v1-4).
  # 'auto' (float16 on GPU, bfloat16 on TPU, float32 on CPU) or a dtype.
  guidance.dtype = 'auto'
  guidance.allow_pickle = False  # Permit loading pickled PyTorch .bin weights.
  guidance.scale = 100.0  # eps_u + scale (eps_c - eps_u); paper omega+1.
  guidance.t_min = 0.02  # Lowest diffusion time, fraction of the schedule.
  guidance.t_max = 0.98  # Highest diffusion time, fraction of the schedule.
  # If set, t_max falls linearly to this over training (low t late = detail).
  guidance.t_max_end = ml_collections.config_dict.placeholder(float)
  guidance.weighting = 'sigma2'  # 'sigma2' (paper), 'uniform', 'snr_sqrt'..
  guidance.view_prompts = True  # Append ', front view' etc. to the prompt.
  # Janus fixes (guidance/views.py), off in the paper's recipe. Guide away
  # from '<prompt>, back view' (front), '..., front view, back view' (side)
  # and '..., front view' (back) instead of the empty prompt.
  guidance.negative_view_prompts = False
  guidance.view_interpolation = False  # Mix front/side/back by azimuth.
  # Perp-Neg: interpolated views and the perpendicular parts of negative
  # views (4 UNet passes per view instead of 2); its weights are
  # -(a exp(-b r) + c) per (a, b, c) below (threestudio's values).
  guidance.perp_neg = False
  guidance.perp_neg_f_sb = (1.0, 0.5, -0.606)  # Side negative, side-back.
  guidance.perp_neg_f_fsb = (1.0, 0.5, 0.967)  # Front negative, side-back.
  guidance.perp_neg_f_fs = (4.0, 0.5, -2.426)  # Front negative, front-side.
  guidance.perp_neg_f_sf = (4.0, 0.5, -2.426)  # Side negative, front-side.

  # The offline toy world (guidance.model = 'toy').
  config.toy = toy = ml_collections.ConfigDict()
  toy.images_per_view = 100  # Prior images per (prompt, view) group.
  # Solid backdrops of the prior's photographs: each appears on every one.
  toy.background_colors = ((1.0, 1.0, 1.0),)
  toy.lit_prob = 1.0  # Share of prior images lit: photographs are.
  # Share of the lit images that are untextured (white albedo, as clay
  # renders); 0: every photograph shows the object's colours.
  toy.textureless_prob = 0.0
  toy.supersample = 2  # s x s sub-pixel rays per prior-image pixel (AA).
  toy.num_timesteps = 1000  # Discrete diffusion steps of the toy schedule.
  toy.beta_start = 0.00085  # Scaled-linear schedule, as Stable Diffusion's.
  toy.beta_end = 0.012  # Scaled-linear schedule end.
  # Shares of front, side, back, overhead images of a prompt when no view is
  # asked (and in the unconditional set); equal shares: the exact prior.
  toy.view_frequencies = (0.25, 0.25, 0.25, 0.25)
  # P('<prompt>, <view> view' shows that view; else one drawn as above).
  toy.view_adherence = 1.0

  # Regularisers (paper 3.1, A.2).
  config.loss = loss = ml_collections.ConfigDict()
  loss.orientation_weight_start = 1e-4  # Orientation weight at step 0.
  loss.orientation_weight_end = 1e-2  # Orientation weight after the ramp.
  loss.orientation_ramp_fraction = 1.0 / 3.0  # Ramp length, share of num_steps.
  loss.orientation_ramp_shape = 'geometric'  # Or 'linear'.
  # Average the orientation loss over 'rays' (all) or the 'opaque' ones.
  loss.orientation_normalize = 'rays'
  loss.opacity_weight = 0.0  # sqrt(opacity^2 + 0.01) sparsity weight.
  loss.entropy_weight = 0.0  # Binary entropy of opacity weight.
  loss.distortion_weight = 0.0  # mip-NeRF 360 distortion (sharp surfaces).
  # Fractions of training over which that weight ramps up linearly from 0;
  # (0, 0): the full weight from the first step.
  loss.distortion_ramp = (0.0, 0.0)

  # Optimiser.
  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 1e-3  # Peak learning rate.
  optim.init_learning_rate = 1e-9  # Learning rate at step 0 (warm-up start).
  optim.final_learning_rate = 1e-5  # Learning rate at the last step (cosine).
  optim.warmup_steps = 500  # Linear warm-up length.
  optim.b1 = 0.9  # Adam beta1.
  optim.b2 = 0.99  # Adam beta2.
  optim.eps = 1e-15  # Adam epsilon (small: SDS gradients are tiny).
  optim.grad_clip = 1.0  # Global-norm clip; 0 disables.
  optim.hashgrid_lr_multiplier = 10.0  # Hash tables' lr relative to MLPs.
  optim.background_lr_multiplier = 1.0  # Background MLP's lr relative.
  optim.max_bad_steps = 20  # Non-finite updates in a row to stop (checked
  # at log and checkpoint steps).

  # Logging.
  config.log = log = ml_collections.ConfigDict()
  log.every_steps = 50  # Scalars to TensorBoard and the console.
  log.preview_every_steps = 500  # Preview image grid (0 disables).
  log.preview_resolution = 64  # Preview render size.

  # Checkpoints (the train state only; never the prior).
  config.checkpoint = checkpoint = ml_collections.ConfigDict()
  checkpoint.every_steps = 1000  # Save interval; the last step always saves.
  checkpoint.keep = 3  # Newest checkpoints kept.

  # Exports written at the end of training and by experiments/export.py.
  config.export = export = ml_collections.ConfigDict()
  export.at_end = True  # Export when training finishes.
  export.num_frames = 120  # Turntable frames.
  export.resolution = 256  # Turntable frame size.
  export.elevation = 20.0  # Turntable elevation in degrees.
  export.fps = 30  # Turntable frame rate.
  export.mesh_resolution = 128  # Density grid size per axis.
  export.mesh_threshold = -1.0  # Density iso-level; < 0 picks automatically.
  export.mesh_bound = 1.0  # The grid spans [-bound, bound]^3.
  export.remove_floaters = True  # Keep only the largest connected piece(s).
  export.floater_fraction = 0.05  # Min faces of a kept piece / largest's.
  export.gif_size = 128  # Longer side of the turntable gifs in pixels.
  # Taubin smoothing of the grid's staircase (0: none). In the mesh check
  # (README) 5 iterations raised the toy meshes' PSNR by 1.6-2.4 dB.
  export.smooth_iterations = 5
  export.target_faces = 0  # Decimate the mesh to this many faces; 0 keeps all.
  export.texture_size = 1024  # Side of the baked texture in pixels.

  return config
