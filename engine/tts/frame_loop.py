"""CSM's per-frame computation without `generate()`.

One frame = one backbone position: the backbone's last hidden state gives codebook 0 (`lm_head`), then the
depth decoder produces codebooks 1..N-1 in N-1 sequential steps with its own small KV cache (reset every
frame), then the frame's summed codebook embeddings are fed back to the backbone at the next position.

`generate()` runs a nested `generate()` for the depth decoder on every frame (config copies, logits-processor
lists, stopping criteria, mask building for each of the 31 steps). Here the decoder layers of both transformers
are called directly: the rotary tables are computed once, single-token steps need no attention mask (a query of
length 1 may attend to the whole cache), and only the depth decoder's two-token first step needs a causal mask,
built once. The operations and their shapes are the same as in transformers' modules, so greedy decoding
reproduces `generate()` exactly (the parity test checks it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CsmForConditionalGeneration, DynamicCache
from transformers.masking_utils import create_causal_mask

from .sampling import TokenPicker
from .weights import depth_head_linears


class DepthCache:
    """The depth decoder's keys and values within one frame: at most `num_codebooks + 1` positions, the same for
    every row. Allocated once and reused every frame (nothing is allocated inside a frame); passed to the decoder
    layers as their `cache`, whose `update` writes each step's keys after the ones before it."""

    def __init__(self, layers: int, rows: int, kv_heads: int, positions: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype) -> None:  # fmt: skip
        shape = (rows, kv_heads, positions, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.filled = [0] * layers
        self.rows = rows

    def reset(self, rows: int) -> None:
        """A new frame for `rows` rows: what the last frame wrote is overwritten, never read."""
        self.rows = rows
        self.filled = [0] * len(self.keys)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs: object = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.filled[layer_idx]
        end = start + key.shape[2]
        self.keys[layer_idx][: self.rows, :, start:end] = key
        self.values[layer_idx][: self.rows, :, start:end] = value
        self.filled[layer_idx] = end
        return self.keys[layer_idx][: self.rows, :, :end], self.values[layer_idx][: self.rows, :, :end]


def new_depth_cache(model: CsmForConditionalGeneration, rows: int) -> DepthCache:
    """A depth cache for `rows` rows of this model's depth decoder, on its device and in its dtype."""
    config = model.depth_decoder.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    weight = model.embed_text_tokens.weight  # the activations' dtype (int8 weights compute in float32)
    return DepthCache(len(model.depth_decoder.model.layers), rows, config.num_key_value_heads,
                      model.config.num_codebooks + 1, head_dim, device=weight.device, dtype=weight.dtype)  # fmt: skip


def _rope_table(rotary: nn.Module, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions [0, length): the same values the module computes per call, computed once."""
    position_ids = torch.arange(length, device=like.device).unsqueeze(0)
    cos, sin = rotary(like, position_ids=position_ids)
    return cos, sin


class CsmFrameLoop:
    """Backbone prefill/step and depth-decoder sampling for a loaded `CsmForConditionalGeneration`."""

    def __init__(self, model: CsmForConditionalGeneration):
        self.model = model
        self.config = model.config
        self.num_codebooks: int = model.config.num_codebooks
        self.vocab_size: int = model.config.vocab_size
        self.backbone = model.backbone_model
        self.depth = model.depth_decoder.model
        self.depth_config = model.depth_decoder.config
        # one output head per depth position: codebook k's is [k - 1] (int8 ones in that weight mode)
        self.depth_heads = depth_head_linears(model)
        # CSM's heads have 2051 outputs but Mimi decodes only codebook_size (2048) codes: never pick the others
        # (a trained model puts ~no mass there, but a runaway pick would crash the codec with an IndexError)
        self.valid_codes = min(self.vocab_size, int(model.config.codec_config.codebook_size))
        self.depth_vocab_size: int = model.depth_decoder.config.vocab_size  # offsets in the depth embedding
        # The activations' device and dtype: the embeddings' (with int8 weights they stay float32).
        self.device = model.embed_text_tokens.weight.device
        self.dtype = model.embed_text_tokens.weight.dtype
        probe = torch.zeros(1, 1, 1, device=self.device, dtype=self.dtype)
        self._backbone_rope = _rope_table(self.backbone.rotary_emb, probe, int(self.config.max_position_embeddings))
        self._depth_rope = _rope_table(self.depth.rotary_emb, probe, self.num_codebooks + 1)
        self._depth_positions = torch.arange(self.num_codebooks + 1, device=self.device).unsqueeze(0)
        self._first_step_mask: torch.Tensor | None = None
        self._first_step_mask_ready = False
        self._depth_cache = new_depth_cache(model, 1)

    # ---------------------------------------------------------------- backbone
    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[T] token ids -> [1, T, hidden]."""
        return self.model.embed_text_tokens(token_ids.to(self.device).unsqueeze(0))

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """[F, num_codebooks] codes -> [1, F, hidden] (sum of the per-codebook embeddings)."""
        return self.backbone.embed_tokens(codes.to(self.device).unsqueeze(0))

    def prefill(self, embeds: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Run `embeds` ([1, L, hidden]) after what `cache` holds; returns the last hidden state [1, 1, hidden].

        Goes through the model's own forward: a multi-token query after a non-empty cache needs the proper
        offset causal mask, which the model builds for whatever attention implementation is loaded.
        """
        out = self.backbone(inputs_embeds=embeds, cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1:, :]

    def step(self, frame: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Feed one generated frame ([num_codebooks]) at the next position; returns the new last hidden state."""
        position = cache.get_seq_length()
        hidden = self.backbone.embed_tokens(frame.view(1, 1, -1))
        cos, sin = self._backbone_rope
        rope = (cos[:, position : position + 1], sin[:, position : position + 1])
        position_ids = torch.tensor([[position]], device=self.device)
        for layer in self.backbone.layers:
            hidden = layer(
                hidden,
                attention_mask=None,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                position_embeddings=rope,
            )
        return self.backbone.norm(hidden)

    # ---------------------------------------------------------------- one frame
    def sample_frame(self, last_hidden: torch.Tensor, pick0: TokenPicker, pick_depth: TokenPicker) -> torch.Tensor:
        """Codebook 0 from the backbone's last hidden state [1, 1, hidden], then the depth decoder's
        codebooks; returns the frame as [num_codebooks] int64 on the model's device."""
        logits0 = self.model.lm_head(last_hidden)[:, -1, : self.valid_codes]
        code = pick0(logits0)  # [1]
        codes = [code]
        cache = self._depth_cache
        cache.reset(1)
        # position 0 carries the backbone state, position 1 the first codebook (codebook index 0 embedding)
        first = self.depth.embed_tokens(code.view(1, 1))
        hidden = torch.cat([last_hidden, first], dim=1)
        hidden = self._depth_forward(hidden, cache, start=0, mask=self._first_mask(hidden))
        for k in range(1, self.num_codebooks):
            code = pick_depth(self.depth_logits(k, hidden[:, -1, :]))
            codes.append(code)
            if k == self.num_codebooks - 1:
                break
            # codebook k's embedding lives at offset k * vocab in the shared embedding table
            embeds = self.depth.embed_tokens((code + k * self.depth_vocab_size).view(1, 1))
            hidden = self._depth_forward(embeds, cache, start=k + 1, mask=None)
        return torch.cat(codes)

    def depth_logits(self, codebook: int, hidden: torch.Tensor) -> torch.Tensor:
        """Codebook `codebook`'s logits (1..N-1) from the depth decoder's hidden state `[rows, depth_hidden]`."""
        return self.depth_heads[codebook - 1](hidden)[:, : self.valid_codes]

    def _depth_forward(
        self, embeds: torch.Tensor, cache: DepthCache, start: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = self.depth.inputs_embeds_projector(embeds)
        length = hidden.shape[1]
        cos, sin = self._depth_rope
        rope = (cos[:, start : start + length], sin[:, start : start + length])
        position_ids = self._depth_positions[:, start : start + length]
        for layer in self.depth.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                position_embeddings=rope,
            )
        return self.depth.norm(hidden)

    def _first_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Causal mask for the depth decoder's 2-token first step; the same every frame, so built once.
        (None for SDPA/flash, which use their causal flag; a real mask for eager attention.)"""
        if not self._first_step_mask_ready:
            self._first_step_mask = create_causal_mask(
                config=self.depth_config,
                inputs_embeds=hidden,
                attention_mask=None,
                cache=DynamicCache(config=self.depth_config),  # an empty cache: the first step starts the frame
                position_ids=self._depth_positions[:, :2],
            )
            self._first_step_mask_ready = True
        return self._first_step_mask
