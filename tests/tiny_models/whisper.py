"""A tiny, randomly initialised Whisper of the real architecture, for tests that must load a model offline.

No weights or tokenizer files can be downloaded here, so everything is built locally:

* a byte-level BPE tokenizer (``tokenizers``) laid out exactly like Whisper's multilingual vocabulary:
  50,257 text tokens, then ``<|endoftext|>``, ``<|startoftranscript|>``, 99 language tokens, the task and
  other control tokens, ``<|notimestamps|>`` and 1,501 timestamp tokens — 51,865 in all. The layout matters:
  faster-whisper derives ``timestamp_begin`` as ``<|notimestamps|> + 1`` and treats ids below
  ``<|endoftext|>`` as text, and CTranslate2 calls a Whisper model multilingual (language detection on)
  only when the vocabulary holds the empty-string token at id 50,256, as the real multilingual one does;
* a ``WhisperForConditionalGeneration`` from a small ``WhisperConfig`` (d_model 64, 2+2 layers) but the
  real input geometry (80 mel bins, 1,500 encoder positions = 30 s, 448 decoder positions), so
  faster-whisper's 30-second windows fit;
* converted with CTranslate2's ``TransformersConverter``, copying ``tokenizer.json`` and
  ``preprocessor_config.json`` beside the weights, so ``faster_whisper.WhisperModel(path)`` loads it through
  the same code path as a real converted model (e.g. Systran/faster-whisper-small).

Its output text is garbage (random weights); tests use it for loading, VAD and plumbing, not accuracy.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

# Whisper's own language-token order (openai/whisper tokenizer.LANGUAGES, the 99 of the v1/v2 models).
WHISPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
    "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
    "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
    "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
    "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su",
)  # fmt: skip

TEXT_VOCAB_SIZE = 50_257  # GPT-2's size: every id below <|endoftext|> is text
NUM_TIMESTAMPS = 1_501  # <|0.00|> … <|30.00|>
CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)
VOCAB_SIZE = TEXT_VOCAB_SIZE + len(CONTROL_TOKENS) + NUM_TIMESTAMPS  # 51,865

TINY_DIMENSIONS = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
}


def _byte_alphabet() -> list[str]:
    """GPT-2's byte → printable-character table (what ByteLevel pre-tokenizer and decoder agree on)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def build_tokenizer():  # -> tokenizers.Tokenizer (imported lazily: keep test collection cheap)
    """A byte-level BPE tokenizer with Whisper's multilingual id layout (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {char: index for index, char in enumerate(alphabet)}
    space = alphabet[ord(" ")]  # "Ġ", id 32 here (220 in GPT-2; nothing depends on the exact number)
    # Real merges for " -" and " '": faster-whisper's default suppress list looks them up as single tokens.
    merges = [(space, "-"), (space, "'")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    # Fill the rest of the text range with word-like pieces: unreachable by encoding (no merges), but
    # decodable, so a random model's output is readable garbage rather than raw bytes.
    letters = string.ascii_lowercase
    fillers = (
        prefix + "".join(combo)
        for length in itertools.count(2)
        for combo in itertools.product(letters, repeat=length)
        for prefix in (space, "")
    )
    for piece in fillers:
        if len(vocab) >= TEXT_VOCAB_SIZE - 1:
            break
        vocab.setdefault(piece, len(vocab))
    # Id 50256 is the empty string in the real multilingual vocabulary (the English-only one has
    # <|endoftext|> there), and recent CTranslate2 (4.8 here) decides "multilingual" by whether "" is a token.
    vocab[""] = TEXT_VOCAB_SIZE - 1

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in CONTROL_TOKENS])
    timestamps = [f"<|{index * 0.02:.2f}|>" for index in range(NUM_TIMESTAMPS)]
    tokenizer.add_tokens([AddedToken(token, special=False) for token in timestamps])
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


def build_hf_model(output_dir: Path, seed: int = 0) -> Path:
    """Save a random tiny Whisper (weights, generation config, tokenizer, preprocessor) in HF layout."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.token_to_id(token) for token in CONTROL_TOKENS}
    eot = ids["<|endoftext|>"]
    sot = ids["<|startoftranscript|>"]

    config = WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        suppress_tokens=[],
        begin_suppress_tokens=[tokenizer.token_to_id("Ġ"), eot],
        **TINY_DIMENSIONS,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()

    generation = model.generation_config
    # transformers 5 ignores a saved generation config marked as derived from the model config, which would
    # drop `lang_to_id` (the converter's source of language ids) on reload.
    generation._from_model_config = False
    generation.decoder_start_token_id = sot
    generation.eos_token_id = eot
    generation.pad_token_id = eot
    generation.suppress_tokens = []
    generation.begin_suppress_tokens = config.begin_suppress_tokens
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    generation.is_multilingual = True
    generation.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in WHISPER_LANGUAGES}
    generation.task_to_id = {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]}
    # Cross-attention heads used for word timestamps: the last decoder layer's, like the converter's default.
    generation.alignment_heads = [[config.decoder_layers - 1, head] for head in range(2)]
    model.save_pretrained(output_dir)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(output_dir)
    # `save_pretrained` may rewrite tokenizer.json; write ours verbatim so faster-whisper reads exactly it.
    tokenizer.save(str(output_dir / "tokenizer.json"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(output_dir)
    return output_dir


def convert_to_ctranslate2(hf_dir: Path, output_dir: Path) -> Path:
    """Convert with CTranslate2's own converter, as `ct2-transformers-converter` does for real models."""
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"])
    converter.convert(str(output_dir), force=True)
    return output_dir


def build_tiny_whisper(work_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model under ``work_dir`` and return the CTranslate2 folder WhisperModel loads."""
    hf_dir = build_hf_model(work_dir / "hf", seed=seed)
    ct2_dir = convert_to_ctranslate2(hf_dir, work_dir / "ct2")
    # A marker for humans poking around the temp dir: this is not a usable speech model.
    (ct2_dir / "TINY_RANDOM_MODEL.json").write_text(json.dumps({"random_weights": True, **TINY_DIMENSIONS}))
    return ct2_dir
