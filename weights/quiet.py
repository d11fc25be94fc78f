"""Keep libraries' import-time noise out of what a user sees.

Importing the model libraries logs warnings that say nothing a user can act on: torchao's
optional CUDA kernels that a CPU build cannot load, torch's notice about torchao's own pytree
registrations, transformers' torchvision fallback, bitsandbytes' optional CPU kernels, and
Cog's deprecation of `BasePredictor` / `predict()` (the API Replicate's users write). Every
entry point imports this module before anything else; errors still show.
"""

import logging
import warnings

NOISY_LOGGERS = (
    "torchao",  # "Failed to load …/torchao/_C_mxfp8….so"
    "torch.utils._pytree",  # "<enum 'KernelPreference'> is an Enum subclass …"
    "diffusers.quantizers.torchao.torchao_quantizer",  # "Unable to import `torchao` Tensor …"
    "transformers.utils.import_utils",  # "`CLIPImageProcessor` requires torchvision …"
    "bitsandbytes",  # "Failed to load CPU gemm_4bit_forward from kernels-community …"
)

for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings(
    "ignore", r".*(BasePredictor|predict\(\)) is deprecated", DeprecationWarning
)
