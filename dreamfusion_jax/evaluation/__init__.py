"""Scores of trained objects; the top floor of the library.

  clip_r_precision  CLIP R-Precision over a caption set (paper section 4,
                    table 1), rendering each run's newest checkpoint
  clip_model        CLIP image and text embeddings (transformers' Flax CLIP)
  toy_sweep         the toy world's table: trains or reuses one run per
                    (prompt, seed) and scores it against the true object
  janus             the Janus table: where the snowman's nose grows, per
                    guidance fix and prior bias
  sds_at_truth      the expected SDS gradient at the true object's renders,
                    per shading mode: what each mode pulls the truth towards
"""
