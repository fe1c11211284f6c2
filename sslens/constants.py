"""Named constants shared across layers. Imports nothing heavy: the CLI reads its choices from here.

The Y/Z model (docs/theory.md §1.1) keeps the attention logits Z in ``W_Q`` of head 0 and the decoder Y
in ``W_U``; per-parameter learning rates are keyed by these names (eta_Z, eta_Y).
"""

from __future__ import annotations

Z_PARAM = "blocks.0.attn.W_Q"  #: Z (attention pseudo-logits) of the Y/Z model; rate eta_Z
Y_PARAM = "unembed.W_U"  #: Y (decoder) of the Y/Z model; rate eta_Y

#: The recorder's fixed probe batch is drawn from ``Generator().manual_seed(seed + PROBE_SEED_OFFSET)``,
#: apart from the training stream; the HookedTransformer trainer and the count engine must agree on it.
PROBE_SEED_OFFSET = 7_654_321
#: torch.Generator.manual_seed takes 64 bits (the probe seed adds PROBE_SEED_OFFSET)
SEED_MAX = 2**63 - 1
STEPS_MAX = 99_999_999  # step_XXXXXXXX.safetensors names hold 8 digits

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")
INITS = ("zero", "random")  #: Y/Z init: zeros (theory, Fig. 4) or nn.Linear's default (Fig. 6)
DTYPE_NAMES = ("float32", "float64")
PRESETS = ("syn-small", "syn-medium")  #: Scan&Snap data presets (docs/theory.md §1.2)
