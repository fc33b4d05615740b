"""A tiny random CSM (backbone + depth decoder + Mimi) and its processor, saved like a real checkpoint.

Tests load it through the same `CsmSpeech.load(path)` code path as real weights, so the model folder must look
like a Hugging Face checkpoint: `config.json` + weights + processor files (tokenizer, feature extractor, chat
template). Nothing is downloaded.

The Mimi codec keeps the real frame geometry (24 kHz, 1920 samples per 12.5 Hz frame, the real kernel sizes
and strides) because `CsmProcessor` counts audio tokens with hard-coded Mimi kernel sizes; only the widths
are shrunk. The backbone's `vocab_size` equals the codec's `codebook_size` so that every sampled code is
decodable by Mimi.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CsmConfig,
    CsmForConditionalGeneration,
    CsmProcessor,
    EncodecFeatureExtractor,
    PreTrainedTokenizerFast,
)

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
AUDIO = "<|AUDIO|>"
AUDIO_EOS = "<|audio_eos|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [BOS, EOS, AUDIO, AUDIO_EOS, PAD, UNK]

# The chat template that transformers' CSM conversion script writes for sesame/csm-1b: every message renders as
# `<bos>[speaker]text<eos>`, followed by `<|AUDIO|><|audio_eos|>` when it carries audio (the processor expands
# `<|AUDIO|>` to one token per Mimi frame).
CSM_CHAT_TEMPLATE = (
    "\n{%- for message in messages %}\n"
    "    {%- if not message['role'] is string or not message['role'].isdigit() %}\n"
    "        {{- raise_exception(\"The role must be an integer or a stringified integer (e.g. '0') "
    'designating the speaker id") }}\n'
    "    {%- endif %}\n"
    "    {%- set content = message['content'] %}\n"
    "    {%- if content is not iterable or content is string %}\n"
    '        {{- raise_exception("The content must be a list") }}\n'
    "    {%- endif %}\n"
    "    {%- set content_types = content | map(attribute='type') | list %}\n"
    "    {%- if loop.last %}\n"
    "        {%- if 'text' not in content_types %}\n"
    "            {{- raise_exception(\"The last message must include one item of type 'text'\") }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {%- if content_types | select('equalto', 'text') | list | length != 1\n"
    "              or content_types | select('equalto', 'audio') | list | length != 1 %}\n"
    "            {{- raise_exception(\"Each message (except the last) must contain exactly one 'text' "
    "and one 'audio' item\") }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {{- bos_token }}\n"
    "    {{- '[' + message['role'] + ']' }}\n"
    "    {{- message['content'][0]['text'] }}\n"
    "    {{- eos_token }}\n"
    "    {%- if message['content']|length > 1 %}\n"
    "        {{- '<|AUDIO|><|audio_eos|>' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# A small English word list so typical test/bench sentences map to real word tokens rather than <|unk|>.
_BASE_WORDS = (
    "a an the and or but if so to of in on at for with from by as is are was were be been it this that "
    "i you he she we they me him her us them my your our their what who how why when where which "
    "hello hi hey yes no okay ok sure thanks thank please sorry good great fine nice well really very "
    "just now then here there today tomorrow yesterday time day night morning evening week "
    "do does did have has had can could will would should may might must not don't it's i'm you're "
    "know think want need like love see look go going come say said tell talk speak listen hear "
    "voice sound music song play game work working budget figuring out up down about more less "
    "one two three four five six seven eight nine ten"
).split()


def build_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer with CSM's special tokens; unknown words map to <|unk|>."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in "[]0123456789.,!?'\"-:;()":
        vocab.setdefault(ch, len(vocab))
    for word in (*_BASE_WORDS, *extra_words):
        for piece in re.findall(r"\w+|[^\w\s]", word.lower()):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = None
    # Split words and each punctuation character separately (so "[0]hello" -> "[", "0", "]", "hello").
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
    )


def build_processor(extra_words: tuple[str, ...] = ()) -> CsmProcessor:
    tokenizer = build_tokenizer(extra_words)
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000)
    return CsmProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CSM_CHAT_TEMPLATE)


def special_token_ids(processor: CsmProcessor) -> dict[str, int]:
    """The config fields that must agree with the tokenizer's ids."""
    tok = processor.tokenizer
    return {
        "bos_token_id": tok.convert_tokens_to_ids(BOS),
        "pad_token_id": tok.convert_tokens_to_ids(PAD),
        "audio_token_id": tok.convert_tokens_to_ids(AUDIO),
        "audio_eos_token_id": tok.convert_tokens_to_ids(AUDIO_EOS),
    }


def tiny_csm_config(text_vocab_size: int, token_ids: dict[str, int]) -> CsmConfig:
    num_codebooks = 8
    codebook_size = 64
    codec_config = {
        "model_type": "mimi",
        "hidden_size": 32,
        "num_filters": 4,
        "codebook_size": codebook_size,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "num_quantizers": num_codebooks,
        "num_semantic_quantizers": 1,
        "upsample_groups": 32,
        "num_hidden_layers": 1,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "sliding_window": 250,
    }
    depth_decoder_config = {
        "num_codebooks": num_codebooks,
        "backbone_hidden_size": 64,
        "vocab_size": codebook_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": num_codebooks + 1,
    }
    return CsmConfig(
        num_codebooks=num_codebooks,
        vocab_size=codebook_size,
        text_vocab_size=text_vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        codebook_pad_token_id=codebook_size - 1,
        codebook_eos_token_id=0,
        depth_decoder_config=depth_decoder_config,
        codec_config=codec_config,
        **token_ids,
    )


def randomize_codebooks(model: CsmForConditionalGeneration) -> None:
    """Fresh Mimi codebooks are all-zero (every vector quantizes to code 0 and every code decodes alike);
    random centroids make encode/decode depend on the data, like a trained codec."""
    with torch.no_grad():
        for module in model.codec_model.modules():
            if type(module).__name__ == "MimiEuclideanCodebook":
                module.embed_sum.normal_()
                module.cluster_usage.fill_(1.0)
                module._embed = None


def build_tiny_csm(path: Path, seed: int = 0) -> Path:
    """Build the tiny random CSM + processor and save both to `path` (created if needed); returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    config = tiny_csm_config(len(processor.tokenizer), special_token_ids(processor))
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(config).eval()
    randomize_codebooks(model)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


__all__ = [
    "CSM_CHAT_TEMPLATE",
    "build_processor",
    "build_tiny_csm",
    "build_tokenizer",
    "randomize_codebooks",
    "special_token_ids",
    "tiny_csm_config",
]
