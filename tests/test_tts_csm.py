"""CsmSpeech on a tiny random CSM saved like a real checkpoint: parity with generate(), prefix cache, budget,
streaming decode, stopping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tts.budget import VoiceTooLongError, estimate_reply_frames
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig
from engine.tts.streaming_decode import SAMPLES_PER_FRAME, StreamConfig
from engine.tts.types import Segment, SpeechResult
from engine.tts.weights import Int8Linear, cpu_has_native_bf16
from tests.tiny_models.csm import build_tiny_csm


def prompt_token_ids(
    speech: CsmSpeech, voice: Segment | None, history: list[Segment], text: str, speaker: int = 0
) -> list[int]:
    """Our prompt as the processor would tokenize it (audio frames as `<|AUDIO|>`, end frames as
    `<|audio_eos|>`), to check it against the chat template."""
    ids: list[int] = []
    for seg in [*([voice] if voice is not None else []), *history]:
        ids += speech.segment_token_ids(seg.text, seg.speaker)
        if seg.codes is not None:
            ids += [speech.processor.audio_token_id] * seg.codes.shape[0] + [speech.processor.audio_eos_token_id]
    return ids + list(speech.segment_token_ids(text, speaker))


@dataclass
class Synthesized:
    """A whole reply: the stream's result and all its audio."""

    result: SpeechResult
    audio: np.ndarray

    def __getattr__(self, name: str) -> object:
        return getattr(self.result, name)


def synthesize(speech: CsmSpeech, voice: Segment | None, history: list[Segment], text: str, speaker: int = 0,
               **kwargs: object) -> Synthesized:  # fmt: skip
    stream = speech.stream(voice, history, text, speaker, **kwargs)  # type: ignore[arg-type]
    chunks = list(stream)
    return Synthesized(stream.result, np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32))


NO_GUARDS = StreamConfig(silence_dbfs=None, repeat_frames=None)
GREEDY = SamplingConfig.greedy()


@pytest.fixture(scope="session")
def tiny_csm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_csm(tmp_path_factory.mktemp("tiny_csm"))


@pytest.fixture(scope="session")
def speech(tiny_csm_path: Path) -> CsmSpeech:
    return CsmSpeech.load(str(tiny_csm_path), device="cpu", weights="fp32")


@pytest.fixture(scope="session")
def clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "voice": (0.1 * rng.standard_normal(2 * 24_000)).astype(np.float32),
        "turn1": (0.1 * rng.standard_normal(24_000 + 700)).astype(np.float32),
        "turn2": (0.1 * rng.standard_normal(12_000)).astype(np.float32),
    }


@pytest.fixture(scope="session")
def conversation(speech: CsmSpeech, clips: dict[str, np.ndarray]) -> tuple[Segment, list[Segment]]:
    voice = Segment(0, "hello there how are you", speech.encode_audio(clips["voice"]))
    history = [
        Segment(1, "i am fine thanks", speech.encode_audio(clips["turn1"])),
        Segment(0, "good to hear", speech.encode_audio(clips["turn2"])),
    ]
    return voice, history


def _chat(voice_text: str, clips: dict[str, np.ndarray], text: str) -> list[dict]:
    def turn(role: str, said: str, audio: np.ndarray | None = None) -> dict:
        content: list[dict] = [{"type": "text", "text": said}]
        if audio is not None:
            content.append({"type": "audio", "path": audio})
        return {"role": role, "content": content}

    return [
        turn("0", voice_text, clips["voice"]),
        turn("1", "i am fine thanks", clips["turn1"]),
        turn("0", "good to hear", clips["turn2"]),
        turn("0", text),
    ]


def test_load_puts_the_weights_in_the_mode_asked(speech: CsmSpeech, tiny_csm_path: Path) -> None:
    assert speech.device.type == "cpu"
    assert speech.model.lm_head.weight.dtype == torch.float32
    assert speech.max_positions == 2048
    with pytest.raises(ValueError):
        CsmSpeech.load("unused", device="tpu")
    bf16 = CsmSpeech.load(str(tiny_csm_path), device="cpu", weights="bf16")
    assert bf16.model.lm_head.weight.dtype == torch.bfloat16 and bf16.loop.dtype == torch.bfloat16
    assert next(bf16.model.codec_model.parameters()).dtype == torch.float32  # Mimi stays fp32
    int8 = CsmSpeech.load(str(tiny_csm_path), device="cpu", weights="int8")
    assert isinstance(int8.model.lm_head, Int8Linear) and int8.loop.dtype == torch.float32
    assert (speech.weights, bf16.weights, int8.weights) == ("float32", "bfloat16", "int8")  # what the log says
    auto = CsmSpeech.load(str(tiny_csm_path), device="cpu")
    assert auto.loop.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    for loaded in (bf16, int8):  # each speaks: a whole reply through the frame loop and Mimi
        stream = loaded.stream(None, [], "Hello there.", max_frames=8, sampling=SamplingConfig(seed=1))
        audio = np.concatenate(list(stream))
        assert audio.size > 0 and np.isfinite(audio).all()


def test_encode_decode_shapes(speech: CsmSpeech, clips: dict[str, np.ndarray]) -> None:
    codes = speech.encode_audio(clips["voice"])
    assert codes.shape == (25, speech.num_codebooks) and codes.dtype == torch.long
    assert int(codes.max()) < speech.config.vocab_size
    audio = speech.decode_codes(codes)
    assert audio.dtype == np.float32 and audio.shape == (25 * SAMPLES_PER_FRAME,)


def test_prompt_matches_chat_template(speech: CsmSpeech, conversation, clips) -> None:
    voice, history = conversation
    text = "nice to see you"
    inputs = speech.processor.apply_chat_template(_chat(voice.text, clips, text), tokenize=True, return_dict=True)
    ours = prompt_token_ids(speech, voice, history, text, speaker=0)
    assert ours == inputs["input_ids"][0].tolist()
    # and the budget counts exactly those positions
    _, plan = speech.plan_context(voice, history, text, 0)
    assert plan.prompt_positions == len(ours)


@pytest.mark.parametrize("cache_key", [None, "voice-a"])
def test_greedy_parity_with_generate(speech: CsmSpeech, conversation, clips, cache_key: str | None) -> None:
    voice, history = conversation
    text = "nice to see you"
    frames = 24
    inputs = speech.processor.apply_chat_template(_chat(voice.text, clips, text), tokenize=True, return_dict=True)
    with torch.inference_mode():
        expected = speech.model.generate(
            **inputs, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames
        )[0]
    assert expected.shape == (frames, speech.num_codebooks)
    for _ in range(2):  # with a key: the first call fills the prefix cache, the second hits it
        stream = speech.stream(
            voice,
            history,
            text,
            0,
            voice_cache_key=cache_key,
            sampling=GREEDY,
            streaming=NO_GUARDS,
            max_frames=frames,
        )
        list(stream)
        result = stream.result
        assert result.stop_reason == "max_frames"
        assert torch.equal(result.codes, expected)
    assert result.stats.prefix_cache_hit == (cache_key is not None)


def test_parity_without_voice_or_history(speech: CsmSpeech) -> None:
    text = "hello"
    inputs = speech.processor.apply_chat_template(
        [{"role": "1", "content": [{"type": "text", "text": text}]}], tokenize=True, return_dict=True
    )
    with torch.inference_mode():
        expected = speech.model.generate(**inputs, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=8)
    result = synthesize(speech, None, [], text, 1, sampling=GREEDY, streaming=NO_GUARDS, max_frames=8)
    assert torch.equal(result.codes, expected[0])


def test_prefix_cache_prefills_only_the_rest_and_is_not_mutated(speech: CsmSpeech, conversation) -> None:
    voice, history = conversation
    speech.prefix_cache.clear()
    first = synthesize(speech, voice, history, "one two", 0, voice_cache_key="v", sampling=GREEDY, max_frames=6)
    assert not first.stats.prefix_cache_hit and len(speech.prefix_cache) == 1
    (entry,) = speech.prefix_cache._entries.values()
    saved = [(k.clone(), v.clone()) for k, v in entry.layers]
    assert entry.positions == speech.segment_positions(voice)
    second = synthesize(speech, voice, history, "one two", 0, voice_cache_key="v", sampling=GREEDY, max_frames=6)
    assert second.stats.prefix_cache_hit
    assert second.stats.prefill_positions == first.stats.prefill_positions - entry.positions
    assert torch.equal(first.codes, second.codes)
    for (k, v), (k0, v0) in zip(entry.layers, saved, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    # same key, different audio: a different entry, never a stale hit
    changed = Segment(voice.speaker, voice.text, voice.codes.flip(0))
    third = synthesize(speech, changed, [], "one two", 0, voice_cache_key="v", sampling=GREEDY, max_frames=2)
    assert not third.stats.prefix_cache_hit and len(speech.prefix_cache) == 2


def test_streaming_chunks_match_one_shot_decode(speech: CsmSpeech, conversation) -> None:
    voice, history = conversation
    cfg = StreamConfig(
        first_chunk_frames=5, chunk_frames=12, left_context_frames=40, silence_dbfs=None, repeat_frames=None
    )
    text = "let us talk about music for a while, and then about the weather"
    stream = speech.stream(voice, history, text, 0, sampling=SamplingConfig(seed=3), streaming=cfg, max_frames=60)
    chunks = list(stream)
    result = stream.result
    sizes = [c.size // SAMPLES_PER_FRAME for c in chunks]
    assert sizes[0] == 5 and all(s == 12 for s in sizes[1:-1]) and sum(sizes) == 60
    assert all(c.dtype == np.float32 for c in chunks)
    assert result.codes.shape == (60, speech.num_codebooks)
    assert result.stats.first_audio_s is not None and result.stats.frames == 60
    streamed = np.concatenate(chunks)
    one_shot = speech.decode_codes(result.codes)
    rel_err = np.linalg.norm(streamed - one_shot) / np.linalg.norm(one_shot)
    assert rel_err < 1e-3, rel_err


def test_sampling_is_seeded_and_valid(speech: CsmSpeech, conversation) -> None:
    voice, history = conversation
    runs = [
        synthesize(
            speech, voice, history, "sure", 0, sampling=SamplingConfig(seed=7), streaming=NO_GUARDS, max_frames=10
        ).codes
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert int(runs[0].min()) >= 0 and int(runs[0].max()) < speech.config.vocab_size
    other = synthesize(
        speech, voice, history, "sure", 0, sampling=SamplingConfig(seed=8), streaming=NO_GUARDS, max_frames=10
    ).codes
    assert not torch.equal(runs[0], other)


def test_budget_drops_history_and_rejects_long_voice(speech: CsmSpeech, conversation) -> None:
    voice, history = conversation
    long_turn = Segment(1, "long turn", torch.zeros(1000, speech.num_codebooks, dtype=torch.long))
    kept, plan = speech.plan_context(voice, [long_turn, long_turn, *history], "hi", 0)
    assert [id(s) for s in kept] == [id(s) for s in (long_turn, *history)] and plan.dropped_history == 1
    assert plan.total_positions <= 2048
    assert plan.reply_frames == estimate_reply_frames("hi")

    transcript = "hello there how are you"
    max_s = speech.max_reference_seconds(transcript, 0, reply_chars=100)
    frames = round(max_s * 12.5)
    reply = "x " * 50  # 100 characters, <= 1 token per character
    fits = Segment(0, transcript, torch.ones(frames, speech.num_codebooks, dtype=torch.long))
    speech.plan_context(fits, [], reply, 0)
    too_long = Segment(0, transcript, torch.ones(frames + 60, speech.num_codebooks, dtype=torch.long))
    with pytest.raises(VoiceTooLongError):
        speech.stream(too_long, [], reply * 2, 0)


def test_end_frame_stops_generation(speech: CsmSpeech, monkeypatch) -> None:
    end = torch.zeros(speech.num_codebooks, dtype=torch.long)
    frames = [torch.full((speech.num_codebooks,), 5), torch.full((speech.num_codebooks,), 6), end]
    calls = iter(frames)
    monkeypatch.setattr(speech.loop, "sample_frame", lambda *_: next(calls))
    result = synthesize(speech, None, [], "hi", 0, streaming=NO_GUARDS)
    assert result.stop_reason == "eos" and result.codes.shape[0] == 2
    assert result.audio is not None and result.audio.size == 2 * SAMPLES_PER_FRAME


def test_repeat_guard_stops_a_stuck_model(speech: CsmSpeech, monkeypatch) -> None:
    stuck = torch.full((speech.num_codebooks,), 9)
    monkeypatch.setattr(speech.loop, "sample_frame", lambda *_: stuck.clone())
    cfg = StreamConfig(first_chunk_frames=5, silence_dbfs=None, repeat_frames=12)
    result = synthesize(speech, None, [], "this is a longer sentence to say", 0, streaming=cfg)
    assert result.stop_reason == "repeat" and result.generated_frames == 12
    assert result.codes.shape[0] == 5  # the first chunk was already played; the rest of the run is dropped


def test_silence_is_trimmed_and_endless_silence_stops(speech: CsmSpeech, monkeypatch) -> None:
    counter = iter(range(1000))
    monkeypatch.setattr(
        speech.loop, "sample_frame", lambda *_: torch.tensor([1, next(counter) % 64] + [2] * (speech.num_codebooks - 2))
    )

    def fake_decode(codes: torch.Tensor) -> torch.Tensor:
        # frames 0..19 are loud, later frames silent
        loud = (codes[:, 1] < 20).float() * 0.5
        return loud.repeat_interleave(SAMPLES_PER_FRAME)

    monkeypatch.setattr(speech, "_decode_tensor", fake_decode)
    cfg = StreamConfig(
        first_chunk_frames=5,
        chunk_frames=10,
        silence_dbfs=-50.0,
        keep_silence_frames=3,
        max_silence_frames=25,
        repeat_frames=None,
    )
    result = synthesize(speech, None, [], "this is a much longer sentence to say out loud", 0, streaming=cfg)
    assert result.stop_reason == "silence"
    assert result.codes.shape[0] == 23  # 20 voiced + 3 kept silent frames
    assert result.audio is not None and result.audio.size == 23 * SAMPLES_PER_FRAME
    assert result.generated_frames >= 45


def test_close_cancels_and_keeps_emitted_codes(speech: CsmSpeech, conversation) -> None:
    voice, history = conversation
    stream = speech.stream(voice, history, "a long answer to cut short", 0, streaming=NO_GUARDS)
    first = next(stream)
    assert not torch.is_inference_mode_enabled()  # grad mode does not leak to the consumer between chunks
    stream.close()
    assert stream.result.stop_reason == "cancelled"
    assert stream.result.codes.shape[0] * SAMPLES_PER_FRAME == first.size
    unstarted = speech.stream(voice, history, "never mind", 0)
    unstarted.close()
    assert unstarted.result.stop_reason == "cancelled" and unstarted.result.codes.shape[0] == 0


def test_only_decodable_codes_are_picked(speech: CsmSpeech, monkeypatch) -> None:
    # real CSM heads have 2051 outputs for Mimi's 2048 codes; the loop must never pick beyond valid_codes
    monkeypatch.setattr(speech.loop, "valid_codes", 4)
    result = synthesize(
        speech, None, [], "hello", 0, sampling=SamplingConfig(seed=0), streaming=NO_GUARDS, max_frames=6
    )
    assert result.codes.shape[0] > 0 and int(result.codes.max()) < 4
