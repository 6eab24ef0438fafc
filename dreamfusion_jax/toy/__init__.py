"""The toy world (DESIGN.md section 7): known objects and their exact prior.

  objects      the five prompts' objects as exact SDFs with albedo
  raytrace     an analytic sphere-tracing renderer of them
  exact_prior  the exact posterior-mean denoiser of a set of their renders
  metrics      IoU, albedo error and the Janus check against the ground truth
"""
