"""CSM frames for several requests at once: one backbone step and one depth-decoder pass for every slot.

The groundwork of the batched speech service (issue 10): each request in flight holds a *slot* of a static,
preallocated backbone KV cache (the full position budget per slot, allocated once); a frame step feeds every
active slot its last frame at that slot's own next position, and the depth decoder then makes codebooks 1..N-1 for
all of them together (its positions are the same for every slot, so its batch needs no padding at all).

Active slots are always the first `active` rows, so attention reads a view of the buffers, never a copy: a request
that leaves has the last active slot moved into its place. A new request's prompt is prefilled on its own (the
solo loop, with the voice prefix cache) and its cache copied into a free slot.

`frame(rows)` is one whole frame step for rows `[0, rows)`: sample every row's frame from its last hidden state,
apply the stopping rules (`SlotStops`, on the device), feed the frames to the backbone, keep the new hidden
states. Nothing in it reads from the device or allocates a buffer that outlives it, and with `static=True` every
shape is fixed by `rows` alone (attention reads each slot's whole position budget, masked), so it can be compiled
whole and captured as a CUDA graph per batch size (`frame_graphs.py`). Without `static`, attention reads only as
far as the longest slot, from lengths the host tracks (an upper bound: a stopped slot stays put): cheaper on a
CPU, where nothing is captured.

The layers are transformers' own, called as `CsmFrameLoop` calls them, with a cache object whose `update` writes
each row's new key and value at that row's position.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .frame_loop import CsmFrameLoop, new_depth_cache
from .race_sampling import race_pick
from .sampling import SamplingConfig
from .slot_stops import SlotStops


class SlotCache:
    """Static backbone keys and values: `[slots, kv_heads, positions, head_dim]` per layer, and each slot's length.

    Passed to the decoder layers as their `cache`: `update()` writes the stepped rows' new key/value at each row's
    position and returns those rows' buffers up to `visible` (a view).
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, positions: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype) -> None:  # fmt: skip
        shape = (slots, kv_heads, positions, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.upper = [0] * slots  # on the host: each slot's length or more (stopped slots stay put on the device)
        self.positions = positions
        self.active = 0  # rows [0, active) are in use
        self.rows = 0  # rows the current step feeds: `active`, or a CUDA graph's bucket
        self.visible = positions  # positions attention reads this step
        self._row_index = torch.arange(slots, device=device)

    @property
    def slots(self) -> int:
        return self.lengths.shape[0]

    def load(self, slot: int, cache: DynamicCache) -> None:
        """Copy a prefilled solo cache (batch 1) into `slot`."""
        length = cache.get_seq_length()
        if length > self.positions:
            raise ValueError(f"a prompt of {length} positions does not fit a slot of {self.positions}")
        for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            keys[slot, :, :length] = cache.layers[layer].keys[0]
            values[slot, :, :length] = cache.layers[layer].values[0]
        self.lengths[slot] = length
        self.upper[slot] = length

    def move(self, source: int, target: int) -> None:
        """Move slot `source`'s contents into `target` (a request left `target`; `source` was the last active)."""
        length = int(self.lengths[source])  # only what it holds: the rest of a slot is never read
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
        self.lengths[target] = length
        self.upper[target] = self.upper[source]

    def free(self, slot: int) -> None:
        # A free slot still steps in a padded batch: at position 0, inside its buffer, never read.
        self.lengths[slot] = 0
        self.upper[slot] = 0

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs: object = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._row_index[: self.rows]
        # Clamped: a slot the budget plan filled to its last position idles there without writing past it.
        position = self.lengths[: self.rows].clamp(max=self.positions - 1)
        self.keys[layer_idx][rows, :, position] = key[:, :, 0]
        self.values[layer_idx][rows, :, position] = value[:, :, 0]
        return (
            self.keys[layer_idx][: self.rows, :, : self.visible],
            self.values[layer_idx][: self.rows, :, : self.visible],
        )


class SlotSampling:
    """Each slot's sampling settings and random state, on the device, moving with its slot.

    Draws use `race_pick`: a request's tokens depend on its own seed and draw count only, so it makes the same
    codes alone or in any batch.
    """

    def __init__(self, slots: int, device: torch.device) -> None:
        def zeros(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(slots, dtype=dtype, device=device)

        self.temperature, self.depth_temperature = zeros(torch.float32), zeros(torch.float32)
        self.top_k, self.depth_top_k = zeros(torch.long), zeros(torch.long)
        self.seeds, self.draws = zeros(torch.long), zeros(torch.long)
        self._fields = (self.temperature, self.depth_temperature, self.top_k, self.depth_top_k, self.seeds,
                        self.draws)  # fmt: skip

    def set(self, slot: int, config: SamplingConfig, max_top_k: int) -> None:
        greedy = not config.do_sample
        self.temperature[slot] = 0.0 if greedy else config.temperature
        depth = config.temperature if config.depth_temperature is None else config.depth_temperature
        self.depth_temperature[slot] = 0.0 if greedy else depth
        # top-k 0 means none, as in the solo loop: here that is the widest the sampler ranks (`max_top_k`).
        self.top_k[slot] = config.top_k if config.top_k > 0 else max_top_k
        depth_top_k = config.top_k if config.depth_top_k is None else config.depth_top_k
        self.depth_top_k[slot] = depth_top_k if depth_top_k > 0 else max_top_k
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()))
        self.seeds[slot] = seed
        self.draws[slot] = 0

    def move(self, source: int, target: int) -> None:
        for field in self._fields:
            field[target] = field[source]


class BatchedFrameLoop:
    """Frame steps for the active slots of a `SlotCache`, on the layers of a `CsmFrameLoop`."""

    def __init__(
        self,
        loop: CsmFrameLoop,
        *,
        max_batch: int,
        max_positions: int | None = None,
        max_top_k: int = 64,
        static: bool = False,
    ) -> None:
        self.loop = loop
        config = loop.config
        attention = getattr(config, "_attn_implementation", None)
        if attention not in (None, "sdpa", "eager"):  # a padded 4-D mask per row is what these two take
            raise ValueError(f"batched CSM needs sdpa or eager attention, not {attention}")
        self.max_positions = max_positions or int(config.max_position_embeddings)
        self.static = static
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = SlotCache(
            len(loop.backbone.layers), max_batch, config.num_key_value_heads, self.max_positions, head_dim,
            device=loop.device, dtype=loop.dtype,
        )  # fmt: skip
        self.sampling = SlotSampling(max_batch, loop.device)
        eos = int(config.codebook_eos_token_id or 0)
        self.stops = SlotStops(max_batch, self.max_positions, loop.num_codebooks, eos, loop.device)
        self.hidden = torch.zeros(max_batch, 1, config.hidden_size, device=loop.device, dtype=loop.dtype)
        self._depth_cache = new_depth_cache(loop.model, max_batch)
        self.max_top_k = max_top_k  # a Python int: the sampler's shapes stay fixed whatever each slot asks
        self._masked = torch.finfo(loop.dtype).min
        self._columns = torch.arange(self.max_positions, device=loop.device)
        loop._first_mask(self.hidden[:1].expand(1, 2, -1))  # built now, never inside a compiled or captured step

    @property
    def active(self) -> int:
        return self.cache.active

    @property
    def slots(self) -> int:
        return self.cache.slots

    def join(
        self,
        cache: DynamicCache,
        sampling: SamplingConfig,
        last_hidden: torch.Tensor | None = None,
        *,
        max_frames: int | None = None,
        repeat_frames: int | None = None,
    ) -> int:
        """Take a prefilled request (its cache and last hidden state `[1, 1, hidden]`), with its own sampling
        settings and seed and stopping rules, into the next free slot; returns its row. `max_frames` defaults to
        what is left of the slot."""
        if self.cache.active == self.cache.slots:
            raise RuntimeError("every slot is in use")
        if max(sampling.top_k, sampling.depth_top_k or 0) > self.max_top_k:
            raise ValueError(f"top-k above {self.max_top_k} is not supported here")
        row = self.cache.active
        self.cache.load(row, cache)
        self.sampling.set(row, sampling, self.max_top_k)
        room = self.max_positions - self.cache.upper[row]
        self.stops.start(row, max(1, min(max_frames or room, room)), repeat_frames)
        if last_hidden is not None:
            self.hidden[row] = last_hidden[0]
        self.cache.active += 1
        return row

    def leave(self, row: int) -> int | None:
        """Free `row`; the last active row moves into it. Returns the row that moved (its new row is `row`)."""
        last = self.cache.active - 1
        moved = None
        if row != last:
            self.cache.move(last, row)
            self.sampling.move(last, row)
            self.stops.move(last, row)
            self.hidden[row] = self.hidden[last]
            moved = last
        self.cache.free(last)
        self.stops.free(last)
        self.cache.active = last
        return moved

    def frame(self, rows: int | None = None) -> None:
        """One frame for rows `[0, rows)` (default: the active ones; more: free slots padding a fixed batch):
        sample, apply the stopping rules, step the backbone, keep the new hidden states. All on the device."""
        rows = self.cache.active if rows is None else rows
        frames = self.sample_frames(self.hidden[:rows])
        running = self.stops.record(frames)
        self.hidden[:rows] = self.step(frames, advance=running)

    def step(self, frames: torch.Tensor, advance: torch.Tensor | None = None) -> torch.Tensor:
        """Feed each row its frame (`[rows, num_codebooks]`) at the row's next position; returns the backbone's
        new last hidden states `[rows, 1, hidden]`. `advance` (`[rows]` bool, default all): which rows move on to
        their next position; the others (stopped, free) stay where they are."""
        rows = frames.shape[0]
        cache = self.cache
        position = cache.lengths[:rows]
        cache.rows = rows
        if self.static:
            cache.visible = self.max_positions
        else:  # only as far as the longest slot can be: no read back from the device
            cache.visible = min(self.max_positions, max(cache.upper[:rows]) + 1)
            for row in range(rows):
                cache.upper[row] += 1
        hidden = self.loop.backbone.embed_tokens(frames.view(rows, 1, -1))
        cos, sin = self.loop._backbone_rope
        at = position.clamp(max=self.max_positions - 1)
        rope = (cos[0, at].unsqueeze(1), sin[0, at].unsqueeze(1))  # [rows, 1, head_dim]
        # Each row sees its own positions up to and including the new one.
        seen = self._columns[: cache.visible].unsqueeze(0) <= position.unsqueeze(1)  # [rows, visible]
        mask = torch.where(seen, 0.0, self._masked).to(self.loop.dtype)[:, None, None, :]
        for layer in self.loop.backbone.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=at.unsqueeze(1),
                cache=cache,
                use_cache=True,
                position_embeddings=rope,
            )
        if advance is None:
            cache.lengths[:rows] += 1
        else:
            cache.lengths[:rows] += advance.long()
        return self.loop.backbone.norm(hidden)

    def sample_frames(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Codebook 0 for each row from its last hidden state `[rows, 1, hidden]`, then every row's depth
        codebooks in one pass, each row drawn with its own settings and seed. Returns `[rows, num_codebooks]`."""
        loop = self.loop
        rows = last_hidden.shape[0]
        s = self.sampling
        first_draw = s.draws[:rows] * loop.num_codebooks

        def pick(logits: torch.Tensor, codebook: int) -> torch.Tensor:
            temperature, top_k = (s.temperature, s.top_k) if codebook == 0 else (s.depth_temperature, s.depth_top_k)
            return race_pick(logits, temperature[:rows], top_k[:rows], s.seeds[:rows], first_draw + codebook,
                             self.max_top_k)  # fmt: skip

        logits0 = loop.model.lm_head(last_hidden)[:, -1, : loop.valid_codes]
        code = pick(logits0, 0)  # [rows]
        codes = [code]
        cache = self._depth_cache
        cache.reset(rows)
        first = loop.depth.embed_tokens(code.view(rows, 1))
        hidden = torch.cat([last_hidden, first], dim=1)
        # The first step's causal mask is the same for every row: built for one, it broadcasts over the batch.
        hidden = loop._depth_forward(hidden, cache, start=0, mask=loop._first_mask(hidden[:1]))
        for k in range(1, loop.num_codebooks):
            logits = loop.depth_logits(k, hidden[:, -1, :])
            code = pick(logits, k)
            codes.append(code)
            if k == loop.num_codebooks - 1:
                break
            embeds = loop.depth.embed_tokens((code + k * loop.depth_vocab_size).view(rows, 1))
            hidden = loop._depth_forward(embeds, cache, start=k + 1, mask=None)
        s.draws[:rows] += 1
        return torch.stack(codes, dim=1)
