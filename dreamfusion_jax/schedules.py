"""Every annealed quantity as a pure function of the step.

Nothing here keeps state: the train step evaluates these inside jit from
`state.step`, so a resumed run sees exactly the values an uninterrupted run
would. (The albedo-only warm-up lives with the shading mix in shading.py.)
"""

import jax.numpy as jnp
import ml_collections
import optax


def learning_rate(optim_config: ml_collections.ConfigDict,
                  num_steps: int) -> optax.Schedule:
  """Linear warm-up from init_learning_rate, then cosine to the final rate.

  The paper warms up from 1e-9 to 1e-4 over 3000 steps and decays to 1e-6
  (appendix A.2).
  """
  c = optim_config
  warmup = min(c.warmup_steps, max(num_steps - 1, 0))
  if warmup == 0:
    # The same cosine, without optax's empty warm-up (which logs a warning
    # each time an optimizer is built).
    return optax.cosine_decay_schedule(
        init_value=c.learning_rate, decay_steps=max(num_steps, 1),
        alpha=c.final_learning_rate / c.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=c.init_learning_rate, peak_value=c.learning_rate,
      warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
      end_value=c.final_learning_rate)


def orientation_weight(step, loss_config: ml_collections.ConfigDict,
                       num_steps: int):
  """Orientation-loss weight, ramped from start to end.

  The paper anneals it from 1e-4 to 1e-2 over the first third of training;
  a 'geometric' ramp spends equal time in each decade. threestudio's
  Stable Diffusion recipe ramps 'linear'ly from 10 to 1000 over half.
  """
  c = loss_config
  ramp = max(c.orientation_ramp_fraction * num_steps, 1.0)
  frac = jnp.clip(step / ramp, 0.0, 1.0)
  if c.orientation_ramp_shape == 'linear':
    weight = (c.orientation_weight_start +
              frac * (c.orientation_weight_end - c.orientation_weight_start))
  else:
    start = jnp.log(jnp.maximum(c.orientation_weight_start, 1e-30))
    end = jnp.log(jnp.maximum(c.orientation_weight_end, 1e-30))
    weight = jnp.exp(start + frac * (end - start))
  return jnp.where(c.orientation_weight_end > 0, weight, 0.0)


def distortion_weight(step, loss_config: ml_collections.ConfigDict,
                      num_steps: int):
  """Distortion-loss weight: 0 until a fraction of training, then ramped.

  With loss.distortion_ramp = (a, b), the weight is 0 before a * num_steps,
  rises linearly to loss.distortion_weight at b * num_steps and stays there;
  a = b is a step at a. A dense, sharp surface passes little gradient (its
  first sample is already opaque), so sharpening before the coarse shape
  has settled can freeze early mistakes, such as a filled-in hole.
  """
  c = loss_config
  start, end = (f * num_steps for f in c.distortion_ramp)
  if end > start:
    frac = jnp.clip((step - start) / (end - start), 0.0, 1.0)
  else:
    frac = jnp.where(step >= start, 1.0, 0.0)
  return c.distortion_weight * frac


def t_max(step, guidance_config: ml_collections.ConfigDict, num_steps: int):
  """Highest diffusion time (fraction of the schedule) at `step`.

  guidance.t_max throughout, or, when guidance.t_max_end is set, a linear
  fall from t_max at step 0 to t_max_end at the last step. Late in training
  the render is already the right object, and small t (little noise) is
  where the prior says most about fine detail and sharp edges; large t only
  re-asks about the coarse layout.
  """
  g = guidance_config
  if g.t_max_end is None:
    return jnp.asarray(g.t_max, jnp.float32)
  frac = jnp.clip(step / max(num_steps - 1, 1), 0.0, 1.0)
  return g.t_max + frac * (g.t_max_end - g.t_max)
