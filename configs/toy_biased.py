"""The toy world with a prior biased like Stable Diffusion's (Janus problem).

configs/toy.py with one change: the toy prior's view bias
(toy.view_frequencies, toy.view_adherence; toy/exact_prior.py). Its images
are the same; only the group weights of its embeddings change, so a bare
prompt mostly gives a front, and '<prompt>, back view' often gives one too,
as Stable Diffusion does. The snowman's nose (on +x) then shows whether a
run grows a face on its back:

  python experiments/train.py --config=configs/toy_biased.py \
      --workdir=/tmp/toy_biased --config.prompt="a snowman"

Three bias levels: 'strong' (the default), 'moderate' and 'severe', e.g.
--config=configs/toy_biased.py:moderate.
"""

import ml_collections

from configs import toy
from dreamfusion_jax import errors

# (view_frequencies over front, side, back, overhead; view_adherence).
LEVELS = {
    # Photographs of an object are mostly taken from the front (product
    # shots, portraits: what text-to-image data holds), so an unviewed
    # prompt gives a front 60% of the time and a back 10%; and a view prompt
    # is obeyed half the time: peers report that '..., back view' often
    # still draws a face.
    'moderate': ((0.6, 0.25, 0.1, 0.05), 0.5),
    # Backs are rare (3%), and '..., back view' gives a back only about a
    # quarter of the time (0.2 + 0.8 * 0.03), a front two thirds.
    'strong': ((0.8, 0.15, 0.03, 0.02), 0.2),
    # A back in 1% of the photographs, and '..., back view' obeyed a tenth
    # of the time: a back camera's prompt gives a front 81% of the time
    # (0.9 * 0.9), a back 11%.
    'severe': ((0.9, 0.08, 0.01, 0.01), 0.1),
}
# Measured (README, the Janus problem; the toy default's centred cameras,
# seeds 0-4, density > 1, the corrected Janus check): at strong bias no
# snowman grows a nose anywhere, with view prompts or without (5 of 5
# none each), nor at moderate or severe bias, where the exact prior grows
# one on the front in every view-prompt run. Why
# (experiments/janus_bias_reach.py): the photographs are lit by random
# lights, and a render's nearest photograph is chosen by
# its light more than by its 3x5-pixel nose (8 of 16 front renders are
# nearest a back photograph). At small noise the exact denoiser answers
# with the nearest photograph among the groups of positive weight,
# whatever the weights, so once a view prompt admits the other views
# (adherence < 1) it takes the nose off the front half the time.

def get_config(level: str = 'strong') -> ml_collections.ConfigDict:
  if level not in LEVELS:
    raise errors.UserError(
        f"'{level}' is not a bias level of configs/toy_biased.py; use one of "
        f"{', '.join(LEVELS)}, e.g. --config=configs/toy_biased.py:moderate.")
  config = toy.get_config()
  frequencies, adherence = LEVELS[level]
  config.toy.view_frequencies = frequencies
  config.toy.view_adherence = adherence
  return config
