"""CSM-1B speech synthesis with our own generation loop: prefix-cached voice, exact budget, streaming audio.

    speech = CsmSpeech.load("sesame/csm-1b", device="auto")
    voice = Segment(0, "exact transcript of the clip", speech.encode_audio(clip_24k))
    stream = speech.stream(voice, history, "Hello there!", speaker=0, voice_cache_key="voice-42")
    for chunk in stream:          # float32, 24 kHz mono, first chunk after a few frames
        play(chunk)
    history.append(stream.result.segment(0, "Hello there!"))

The prompt follows transformers' CSM chat template: each context segment is `<bos>[speaker]text<eos>` followed
by its Mimi frames and one all-zero end frame; then the target `<bos>[speaker]text<eos>`; generation continues
with audio frames until the all-zero end frame. The API is synchronous; callers run it in a worker thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, CsmForConditionalGeneration, DynamicCache

from .budget import (
    MAX_CSM_POSITIONS,
    ContextPlan,
    estimate_reply_frames,
    frames_to_seconds,
    max_reference_frames,
    plan_positions,
    segment_positions,
)
from .codes import SAMPLE_RATE
from .frame_loop import CsmFrameLoop
from .prefix_cache import PrefixCache, content_key, restore, snapshot
from .reply_frames import ReplyFrames
from .sampling import SamplingConfig, make_generator
from .stream import SpeechStream
from .streaming_decode import StreamConfig
from .types import GenerationStats, Segment, SpeechResult
from .weights import Int8Linear, apply_weight_mode, resolve_weight_mode


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


@dataclass(frozen=True)
class SpeechRequest:
    """One text to speak, planned: the context that fits, the frame cap, the sampling and streaming settings."""

    voice: Segment | None
    history: list[Segment]
    text: str
    speaker: int
    key: str | None
    sampling: SamplingConfig
    streaming: StreamConfig
    max_frames: int
    plan: ContextPlan
    t0: float  # when stream() was called: time to first audio counts from here


class CsmSpeech:
    """CSM text-to-speech engine bound to one loaded model (thread-safe for one call at a time per instance)."""

    def __init__(self, model: CsmForConditionalGeneration, processor, *, prefix_cache_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = model.config
        self.loop = CsmFrameLoop(model)
        # what the weights are in memory (`load` says int8 when it quantized them), for the operator's log
        self.weights = "int8" if isinstance(model.lm_head, Int8Linear) else str(self.loop.dtype).removeprefix("torch.")
        self.prefix_cache = PrefixCache(prefix_cache_size)
        self.max_positions = min(int(self.config.max_position_embeddings), MAX_CSM_POSITIONS)
        self._codec_device = next(model.codec_model.parameters()).device
        self._text_ids: OrderedDict[tuple[int, str], tuple[int, ...]] = OrderedDict()
        self._text_lock = threading.Lock()

    @classmethod
    def load(
        cls, model: str | Path, device: str = "auto", *, prefix_cache_size: int = 8, weights: str = "auto"
    ) -> CsmSpeech:
        """Load model + processor from a Hub id or a local folder, its weights in `weights` mode
        (`engine.tts.weights`: auto is bf16 on CUDA and on CPUs with native bf16, else fp32; int8 on a CPU).

        The Mimi codec stays in fp32 on every device: it is small, and fp32 keeps the streamed decode within
        float rounding of a one-shot decode.
        """
        dev = resolve_device(device)
        mode = resolve_weight_mode(weights, dev)
        processor = AutoProcessor.from_pretrained(model)
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        csm = CsmForConditionalGeneration.from_pretrained(model, dtype=dtype)
        apply_weight_mode(csm, mode)
        csm.to(dev).eval()
        return cls(csm, processor, prefix_cache_size=prefix_cache_size)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.loop.device

    @property
    def num_codebooks(self) -> int:
        return self.loop.num_codebooks

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def forget_cached(self, voice_cache_key: str | None = None) -> None:
        """Drop what memory holds of a deleted voice (its prefix KV), or of everyone (all caches)."""
        if voice_cache_key is not None:
            self.prefix_cache.discard_prefix(f"{voice_cache_key}:")
            return
        self.prefix_cache.clear()
        with self._text_lock:
            self._text_ids.clear()  # token ids of texts people said

    # ------------------------------------------------------------------ audio <-> codes
    def encode_audio(self, audio: np.ndarray) -> torch.Tensor:
        """Mimi codes `[frames, num_codebooks]` (int64, CPU) of 24 kHz mono float32 audio. Encode a voice
        reference once and keep its codes: calls take codes, never audio."""
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected mono audio of shape [samples], got {wave.shape}")
        if wave.size == 0:
            return torch.zeros(0, self.num_codebooks, dtype=torch.long)
        with torch.inference_mode():
            values = torch.from_numpy(wave).to(self._codec_device).view(1, 1, -1)
            codes = self.model.codec_model.encode(values).audio_codes  # [1, num_codebooks, frames]
        # cloned outside inference mode: callers may edit or save the codes like any tensor
        return codes[0, : self.num_codebooks].T.to("cpu", torch.long).clone()

    def _decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        values = codes.to(self._codec_device).T.unsqueeze(0)  # [1, num_codebooks, frames]
        return self.model.codec_model.decode(values).audio_values[0, 0]

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """One-shot Mimi decode of `[frames, num_codebooks]` codes to float32 24 kHz audio."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            return self._decode_tensor(codes).float().cpu().numpy()

    # ------------------------------------------------------------------ tokens and budget
    def segment_token_ids(self, text: str, speaker: int) -> tuple[int, ...]:
        """Token ids of `<bos>[speaker]text<eos>` exactly as the processor's chat template renders a turn."""
        key = (speaker, text)
        with self._text_lock:
            ids = self._text_ids.get(key)
            if ids is not None:
                self._text_ids.move_to_end(key)
                return ids
        if getattr(self.processor, "chat_template", None):
            message = {"role": str(speaker), "content": [{"type": "text", "text": text}]}
            rendered = self.processor.apply_chat_template([message], tokenize=False)
        else:
            rendered = f"{self.tokenizer.bos_token}[{speaker}]{text}{self.tokenizer.eos_token}"
        ids = tuple(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        with self._text_lock:
            self._text_ids[key] = ids
            while len(self._text_ids) > 1024:
                self._text_ids.popitem(last=False)
        return ids

    def count_text_tokens(self, text: str, speaker: int = 0) -> int:
        return len(self.segment_token_ids(text, speaker))

    def segment_positions(self, segment: Segment) -> int:
        return segment_positions(self.count_text_tokens(segment.text, segment.speaker), segment.frames)

    def plan_context(
        self, voice: Segment | None, history: Sequence[Segment], text: str, speaker: int = 0
    ) -> tuple[list[Segment], ContextPlan]:
        """Which history fits (newest kept) and the position accounting; raises `VoiceTooLongError` when the
        voice segment alone leaves no room for the text and its reply, `TextTooLongError` if the text can't fit."""
        plan = plan_positions(
            voice_positions=self.segment_positions(voice) if voice is not None else 0,
            history_positions=[self.segment_positions(seg) for seg in history],
            text_positions=self.count_text_tokens(text, speaker),
            reply_frames=estimate_reply_frames(text),
            max_positions=self.max_positions,
        )
        kept = list(history[len(history) - plan.kept_history :]) if plan.kept_history else []
        return kept, plan

    def max_reference_seconds(self, transcript: str, speaker: int = 0, reply_chars: int = 300) -> float:
        """Longest reference clip (seconds) whose segment still leaves room for a `reply_chars`-character reply
        (its text, counted as at most one token per character, plus its reserved frames)."""
        reply_text_positions = self.count_text_tokens("", speaker) + reply_chars
        reserved = reply_text_positions + estimate_reply_frames("x" * reply_chars)
        frames = max_reference_frames(self.count_text_tokens(transcript, speaker), reserved, self.max_positions)
        return frames_to_seconds(frames)

    # ------------------------------------------------------------------ prompt embedding
    def _embed_segments(self, segments: Sequence[Segment], text: str | None, speaker: int) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for seg in segments:
            parts.append(self.loop.embed_text(torch.tensor(self.segment_token_ids(seg.text, seg.speaker))))
            if seg.codes is not None:
                end_frame = torch.zeros(1, self.num_codebooks, dtype=torch.long)
                parts.append(self.loop.embed_frames(torch.cat([seg.codes.to("cpu", torch.long), end_frame])))
        if text is not None:
            parts.append(self.loop.embed_text(torch.tensor(self.segment_token_ids(text, speaker))))
        return torch.cat(parts, dim=1)

    def _prefill(
        self,
        voice: Segment | None,
        history: Sequence[Segment],
        text: str,
        speaker: int,
        key: str | None,
        stats: GenerationStats,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Backbone KV cache for the whole prompt and the last hidden state, in one go (see `prefill_steps`)."""
        steps = self.prefill_steps(voice, history, text, speaker, key, stats)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def prefill_steps(
        self,
        voice: Segment | None,
        history: Sequence[Segment],
        text: str,
        speaker: int,
        key: str | None,
        stats: GenerationStats,
        chunk: int | None = None,
    ) -> Generator[None, None, tuple[torch.Tensor, DynamicCache]]:
        """The prompt through the backbone, `chunk` positions at a time (pausing between chunks, so that a
        long prompt can be interleaved with other requests' frames); returns its cache and last hidden state.

        With a cache key, the voice segment's KV comes from (or goes into) the prefix cache and only history +
        text are prefilled here.
        """
        start = time.perf_counter()
        if voice is not None and key is not None:
            codes = voice.codes if voice.codes is not None else torch.zeros(0, 0, dtype=torch.long)
            full_key = f"{key}:{content_key(voice.speaker, voice.text, codes)}"
            entry = self.prefix_cache.get(full_key)
            if entry is not None:
                cache = restore(entry, self.config)
                stats.prefix_cache_hit = True
            else:
                cache = self.loop.new_cache()
                yield from self._prefill_embeds(self._embed_segments([voice], None, speaker), cache, chunk)
                self.prefix_cache.put(full_key, snapshot(cache))
                yield
            cached = cache.get_seq_length()
            embeds = self._embed_segments(history, text, speaker)
        else:
            cache = self.loop.new_cache()
            cached = 0
            embeds = self._embed_segments([*([voice] if voice is not None else []), *history], text, speaker)
        last_hidden = yield from self._prefill_embeds(embeds, cache, chunk)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.prefill_positions = cache.get_seq_length() - (cached if stats.prefix_cache_hit else 0)
        stats.prefill_s = time.perf_counter() - start
        return last_hidden, cache

    def _prefill_embeds(
        self, embeds: torch.Tensor, cache: DynamicCache, chunk: int | None
    ) -> Generator[None, None, torch.Tensor]:
        """`embeds` after what `cache` holds, `chunk` positions at a time; the last hidden state."""
        size = chunk or embeds.shape[1]
        last_hidden = torch.empty(0)
        for begin in range(0, embeds.shape[1], size):
            last_hidden = self.loop.prefill(embeds[:, begin : begin + size], cache)
            if begin + size < embeds.shape[1]:
                yield
        return last_hidden

    # ------------------------------------------------------------------ generation
    def stream(
        self,
        voice: Segment | None,
        history: Sequence[Segment],
        text: str,
        speaker: int = 0,
        voice_cache_key: str | None = None,
        sampling: SamplingConfig | None = None,
        streaming: StreamConfig | None = None,
        max_frames: int | None = None,
    ) -> SpeechStream:
        """Speak `text` as `speaker`, conditioned on the voice segment and as much history as fits.

        Budget errors raise here, before anything runs. `voice_cache_key` (e.g. the voice id) enables the
        prefix cache for the voice segment; the key is combined with a hash of its codes and text. `max_frames`
        can only lower the cap derived from the text length.
        """
        request = self.plan_request(voice, history, text, speaker, voice_cache_key, sampling, streaming, max_frames)
        stream = SpeechStream(request.plan, request.history, self.num_codebooks)
        stream._attach(self._run(stream, request))
        return stream

    def plan_request(
        self,
        voice: Segment | None,
        history: Sequence[Segment],
        text: str,
        speaker: int = 0,
        voice_cache_key: str | None = None,
        sampling: SamplingConfig | None = None,
        streaming: StreamConfig | None = None,
        max_frames: int | None = None,
    ) -> SpeechRequest:
        """What to speak and with what context, its budget checked (budget errors raise here); see `stream`."""
        if not text.strip():
            raise ValueError("nothing to say")
        kept, plan = self.plan_context(voice, history, text, speaker)
        limit = plan.reply_frames if max_frames is None else max(1, min(max_frames, plan.reply_frames))
        return SpeechRequest(voice, kept, text, speaker, voice_cache_key, sampling or SamplingConfig(),
                             streaming or StreamConfig(), limit, plan, time.perf_counter())  # fmt: skip

    def prefill(self, request: SpeechRequest, stats: GenerationStats) -> tuple[torch.Tensor, DynamicCache]:
        """The request's prompt through the backbone (the voice from the prefix cache when it is there)."""
        return self._prefill(request.voice, request.history, request.text, request.speaker, request.key, stats)

    def prefill_request_steps(
        self, request: SpeechRequest, stats: GenerationStats, chunk: int | None
    ) -> Generator[None, None, tuple[torch.Tensor, DynamicCache]]:
        """`prefill`, `chunk` positions at a time (see `prefill_steps`)."""
        return self.prefill_steps(
            request.voice, request.history, request.text, request.speaker, request.key, stats, chunk
        )

    def _run(self, stream: SpeechStream, req: SpeechRequest) -> Generator[np.ndarray, None, None]:
        stats = GenerationStats()
        # inference_mode is entered per step, never across a `yield`: grad mode is thread-local and the
        # consumer's code runs between our yields.
        with torch.inference_mode():
            last_hidden, cache = self.prefill(req, stats)
            generator = make_generator(req.sampling.seed, self.device)
            pick0, pick_depth = req.sampling.backbone_picker(generator), req.sampling.depth_picker(generator)
            reply = self.new_reply(req.streaming, req.max_frames)

        def finish(reason: str) -> None:
            stats.total_s = time.perf_counter() - req.t0
            stats.decode_s = reply.decode_s
            stream._finish(SpeechResult(reply.kept_codes(), reason, reply.produced, req.plan, stats))

        try:
            while reply.stop is None:
                with torch.inference_mode():
                    while reply.needs_frames():
                        t_frame = time.perf_counter()
                        frame = self.loop.sample_frame(last_hidden, pick0, pick_depth)
                        # the one host sync per frame: needed to decide stopping
                        if reply.accept(frame, frame.tolist()):
                            last_hidden = self.loop.step(frame, cache)
                        stats.frame_s.append(time.perf_counter() - t_frame)
                    chunk = reply.decode()
                if chunk is not None:
                    if stats.first_audio_s is None:
                        stats.first_audio_s = time.perf_counter() - req.t0
                    yield chunk
        except GeneratorExit:
            finish("cancelled")
            raise
        finish(reply.stop or "max_frames")

    def new_reply(self, streaming: StreamConfig, max_frames: int, codes: torch.Tensor | None = None) -> ReplyFrames:
        """The stopping rules and streamed decode of one reply of at most `max_frames` frames (its codes in
        `codes` when given: the speech service's slot buffer)."""
        eos = int(self.config.codebook_eos_token_id or 0)
        return ReplyFrames(self._decode_tensor, streaming, max_frames, self.num_codebooks, self.device, eos, codes)
