"""Initial weights for an audio tower alone (``ClapConfig.audio_pretrained``): from one of our model
folders, a transformers CLAP folder, a LAION-CLAP ``.pt``, an HTS-AT AudioSet checkpoint
(``sed_model.``) or a PANN AudioSet checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor, nn

from clap.model.hf_interop import read_transformers_weights
from clap.model.laion import check_attn_masks, map_htsat_branch, split_audio_branch
from clap.model.native import FORMAT, WEIGHTS_FILE, read_folder_config
from clap.model.weights import CheckpointError, load_strict, read_torch_state_dict

logger = logging.getLogger(__name__)


def _encoder_state_from_file(path: Path) -> dict[str, Tensor]:
    """Audio-branch weights (reference names, no prefix) from a LAION-CLAP, HTS-AT AudioSet (``sed_model.``)
    or PANN AudioSet checkpoint."""
    state = read_torch_state_dict(path)
    for prefix in ("audio_branch.", "sed_model."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_audio_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Initialise an audio tower from pretrained weights (strict, apart from the AudioSet heads and
    front-end buffers, which the reference skips too: AudioSet HTS-AT was trained at 32 kHz).

    ``path``: one of our model folders, a transformers CLAP folder, a LAION-CLAP ``.pt``, an HTS-AT
    AudioSet checkpoint or a PANN AudioSet checkpoint.
    """
    path = Path(path)
    family = encoder.config.get("family")
    if path.is_dir():
        meta = read_folder_config(path)
        if meta.get("format") == FORMAT:  # our audio_encoder.* -> the tower's own names
            state, prefix, ours = load_file(str(path / WEIGHTS_FILE)), "audio_encoder.", ""
        elif meta.get("model_type") == "clap":  # transformers' audio_model.* is our htsat.*
            state, prefix, ours = read_transformers_weights(path), "audio_model.", "htsat."
        else:
            raise CheckpointError(f"{path}: not a model folder of ours or of transformers CLAP (see config.json)")
        mapped = {ours + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        origin = {ours + k[len(prefix):]: k for k in state if k.startswith(prefix)}
    else:
        weights, _frontend, masks = split_audio_branch(_encoder_state_from_file(path))
        if family == "htsat":
            if masks:
                check_attn_masks(encoder, masks, str(path))
            branch, branch_origin = map_htsat_branch(weights)
            mapped = {"htsat.audio_encoder." + k: v for k, v in branch.items()}
            origin = {"htsat.audio_encoder." + k: v for k, v in branch_origin.items()}
        else:
            mapped = {"cnn." + k: v for k, v in weights.items()}
            origin = {"cnn." + k: k for k in weights}
    if getattr(encoder, "fusion", False) and not any(".fusion_model." in k or ".mel_conv2d." in k for k in mapped):
        # A fusion tower started from a non-fusion encoder: the fusion layers are new and keep their init.
        fusion_parts = {k: v for k, v in encoder.state_dict().items() if ".fusion_model." in k or ".mel_conv2d." in k}
        mapped.update(fusion_parts)
        logger.info("%s: no fusion layers in the checkpoint; %d fusion tensors keep their initialisation", path,
                    len(fusion_parts))
    load_strict(encoder, mapped, str(path), renamed=origin)
    logger.info("audio encoder '%s': initial weights from %s", encoder.name, path)
