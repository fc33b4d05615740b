"""How many sentences the speech service holds at once: what a slot costs, and the default from the device."""

from __future__ import annotations

import torch

from .csm import CsmSpeech


def slot_bytes(speech: CsmSpeech) -> int:
    """Memory one request's slot of backbone keys and values takes (the full position budget)."""
    config = speech.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.finfo(speech.loop.dtype).bits // 8
    return len(speech.loop.backbone.layers) * 2 * config.num_key_value_heads * speech.max_positions * head_dim * element


def default_max_batch(speech: CsmSpeech) -> int:
    """How many requests to hold at once: on a GPU as many slots as half its free memory takes (up to 16; at
    CSM-1B's size in bf16 a slot is 64 MiB); on a CPU 8, where eight together make 3× (fp32) to 6.7× (bf16) the
    frames of one (bench/tts.py)."""
    if speech.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(speech.device)
        return max(1, min(16, int(free // 2 // slot_bytes(speech))))
    return 8
