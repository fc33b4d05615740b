"""The TTS weight modes (engine/tts/weights.py): Int8Linear's accuracy and row independence, apply_weight_mode on
a tiny CSM, the mode resolution and the logit comparison used by the benchmark."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import CsmForConditionalGeneration

from engine.tts.weights import (
    Int8CodebooksHead,
    Int8Linear,
    apply_weight_mode,
    compare_logits,
    depth_head_linears,
    resolve_weight_mode,
)
from tests.tiny_models.csm import build_processor, special_token_ids, tiny_csm_config

CPU = torch.device("cpu")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS of the difference over the RMS of the expected output."""
    diff = (actual.double() - expected.double()).pow(2).mean().sqrt()
    return float(diff / expected.double().pow(2).mean().sqrt())


# ---------------------------------------------------------------- Int8Linear


@pytest.mark.parametrize("rows", range(1, 10))
def test_int8_linear_is_close_to_the_float_linear(rows: int) -> None:
    torch.manual_seed(rows)
    linear = nn.Linear(96, 40)
    int8 = Int8Linear.from_linear(linear)
    x = torch.randn(rows, 96)
    with torch.no_grad():
        assert relative_error(int8(x), linear(x)) < 0.02


def test_int8_linear_takes_3d_input_and_bias_and_follows_the_input_dtype() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 24, bias=True)
    with torch.no_grad():
        linear.bias.mul_(10)  # a bias that matters: dropping or mis-scaling it would show
    int8 = Int8Linear.from_linear(linear)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = linear(x)
        out = int8(x)
        assert out.shape == (2, 5, 24) and out.dtype == torch.float32
        assert relative_error(out, expected) < 0.02
        out_bf16 = int8(x.bfloat16())
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == (2, 5, 24)
    assert relative_error(out_bf16, expected) < 0.03  # plus bf16 rounding of input and output
    without_bias = Int8Linear(linear.weight)
    with torch.no_grad():
        assert relative_error(without_bias(x) + linear.bias, expected) < 0.02


def test_int8_linear_edge_rows() -> None:
    """An all-zero row gives zeros (plus bias), not NaN; no rows gives no rows."""
    int8 = Int8Linear(torch.randn(8, 16), torch.ones(8))
    x = torch.zeros(3, 16)
    x[1] = torch.randn(16)
    out = int8(x)
    assert torch.equal(out[0], torch.ones(8)) and torch.equal(out[2], torch.ones(8))
    assert torch.isfinite(out).all()
    assert int8(torch.zeros(0, 16)).shape == (0, 8)


def test_int8_linear_rows_are_independent_of_the_batch() -> None:
    """A row's output is bit-identical alone or next to rows 1e4x louder or quieter: per-row activation scales."""
    torch.manual_seed(1)
    int8 = Int8Linear(torch.randn(48, 64), torch.randn(48))
    row = torch.randn(1, 64)
    alone = int8(row)
    for others in (torch.randn(7, 64) * 1e4, torch.randn(7, 64) * 1e-4, torch.zeros(3, 64)):
        for at in (0, 2, others.shape[0]):
            batch = torch.cat([others[:at], row, others[at:]])
            assert torch.equal(int8(batch)[at], alone[0])


def test_int8_linear_traces_as_one_graph() -> None:
    """No host sync and no branch on values: dynamo traces the forward whole (fullgraph fails on a break)."""
    int8 = Int8Linear(torch.randn(24, 64), torch.randn(24))
    compiled = torch.compile(int8, backend="eager", fullgraph=True)
    x = torch.randn(3, 5, 64)
    assert torch.equal(compiled(x), int8(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao is deprecated
def test_per_tensor_dynamic_quantization_couples_rows() -> None:
    """Why not torch.ao's dynamic quantization: one activation scale for the whole batch, so a loud row next
    to it changes (here wrecks) a quiet row's output."""
    if not hasattr(torch.ao.quantization, "quantize_dynamic"):
        pytest.skip("this torch no longer ships torch.ao dynamic quantization")
    torch.manual_seed(1)
    linear = nn.Linear(64, 48)
    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    row = torch.randn(1, 64)
    loud = torch.randn(1, 64) * 1e3
    with torch.no_grad():
        assert not torch.equal(dynamic(torch.cat([row, loud]))[0], dynamic(row)[0])
        int8 = Int8Linear.from_linear(linear)
        assert torch.equal(int8(torch.cat([row, loud]))[0], int8(row)[0])


# ---------------------------------------------------------------- apply_weight_mode on a tiny CSM


def tiny_csm(seed: int = 0) -> CsmForConditionalGeneration:
    """The tiny random CSM, with its heads scaled up: at the default init the logits are ~uniform and any
    weight mode would look perfect."""
    processor = build_processor()
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_csm_config(len(processor.tokenizer), special_token_ids(processor)))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.depth_decoder.codebooks_head.weight.normal_(std=0.5)
    return model.eval()


def backbone_logits(model: CsmForConditionalGeneration, token_ids: torch.Tensor) -> torch.Tensor:
    """Codebook-0 logits [tokens, vocab] of a text prompt, through the backbone and lm_head."""
    with torch.no_grad():
        embeds = model.embed_text_tokens(token_ids.unsqueeze(0))
        hidden = model.backbone_model(inputs_embeds=embeds).last_hidden_state
        return model.lm_head(hidden)[0].float()


def float_linear_names(module: nn.Module) -> set[str]:
    return {name for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def test_int8_mode_quantizes_the_transformers_and_keeps_the_codec() -> None:
    model = tiny_csm()
    reference = copy.deepcopy(model)
    codec_linears = float_linear_names(model.codec_model)
    quantized = {"lm_head"}
    quantized |= {f"backbone_model.{name}" for name in float_linear_names(model.backbone_model)}
    quantized |= {f"depth_decoder.{name}" for name in float_linear_names(model.depth_decoder)}
    assert "depth_decoder.model.inputs_embeds_projector" in quantized
    assert len(quantized) == 30  # 1 + 2 layers x 7 in each transformer + the depth input projector

    apply_weight_mode(model, "int8")

    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], Int8Linear) for name in quantized)
    assert {name for name, child in modules.items() if isinstance(child, nn.Linear)} == {
        f"codec_model.{name}" for name in codec_linears
    }
    heads = model.depth_decoder.codebooks_head
    assert isinstance(heads, Int8CodebooksHead) and len(heads.heads) == model.config.num_codebooks - 1
    # the float weights are gone: what float parameters remain outside the codec are embeddings and norms
    left = [name for name, _ in model.named_parameters() if not name.startswith("codec_model.")]
    assert left and all("embed" in name or "norm" in name for name in left), left
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, tensor in model.codec_model.state_dict().items():
        assert torch.equal(tensor, reference.codec_model.state_dict()[name])

    ids = torch.arange(3, 40)
    kl, overlap = compare_logits(backbone_logits(reference, ids), backbone_logits(model, ids), top=8)
    assert kl < 0.005 and overlap > 0.9, (kl, overlap)


def test_depth_head_linears_compute_the_frame_loops_product() -> None:
    model = tiny_csm()
    heads = model.depth_decoder.codebooks_head.weight
    hidden = torch.randn(3, heads.shape[1])
    with torch.no_grad():
        expected = [F.linear(hidden, heads[k].T) for k in range(heads.shape[0])]
        linears = depth_head_linears(model)
        assert len(linears) == model.config.num_codebooks - 1
        assert all(torch.equal(head(hidden), want) for head, want in zip(linears, expected, strict=True))
        apply_weight_mode(model, "int8")
        linears = depth_head_linears(model)
        assert all(isinstance(head, Int8Linear) for head in linears)
        for head, want in zip(linears, expected, strict=True):
            assert relative_error(head(hidden), want) < 0.02
        # transformers' own head path (generate()) goes through the same int8 heads
        stacked = torch.stack([hidden] * 3, dim=1)  # positions 1..3 of the depth decoder
        out = model.depth_decoder.codebooks_head(stacked, torch.tensor([1, 2, 3]))
        assert torch.equal(out, torch.stack([linears[k](hidden) for k in range(3)], dim=1))


def test_bf16_mode_casts_all_but_the_codec() -> None:
    model = tiny_csm()
    reference = copy.deepcopy(model)
    apply_weight_mode(model, "bf16")
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if name.startswith("codec_model.") else torch.bfloat16), name
    linears = depth_head_linears(model)
    head_weight = model.depth_decoder.codebooks_head.weight
    hidden = torch.randn(2, head_weight.shape[1], dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(linears[2](hidden), F.linear(hidden, head_weight[2].T))
    ids = torch.arange(3, 40)
    kl, overlap = compare_logits(backbone_logits(reference, ids), backbone_logits(model, ids), top=8)
    assert kl < 0.005 and overlap > 0.9, (kl, overlap)
    apply_weight_mode(model, "fp32")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():  # the float heads read the live parameter, so they follow the cast
        assert linears[2](hidden.float()).dtype == torch.float32


# ---------------------------------------------------------------- mode resolution and the logit comparison


def test_resolve_weight_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    assert resolve_weight_mode("auto", cuda) == "bf16"
    assert resolve_weight_mode("fp32", CPU) == "fp32"
    assert resolve_weight_mode("bf16", CPU) == "bf16"
    assert resolve_weight_mode("int8", CPU) == "int8"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_weight_mode("auto", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_weight_mode("auto", CPU) == "fp32"
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older/newer torch without the probe
    assert resolve_weight_mode("auto", CPU) == "fp32"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_weight_mode("int8", cuda)
    with pytest.raises(ValueError, match="auto, fp32, bf16, int8"):
        resolve_weight_mode("fp16", CPU)
    with pytest.raises(ValueError):
        apply_weight_mode(tiny_csm(), "auto")  # type: ignore[arg-type]


def test_compare_logits_of_identical_logits() -> None:
    logits = torch.randn(5, 64)
    assert compare_logits(logits, logits.clone()) == (0.0, 1.0)


def test_compare_logits_by_hand() -> None:
    p = torch.tensor([0.2, 0.3, 0.5])
    q = torch.tensor([0.5, 0.3, 0.2])
    reference = torch.stack([p.log(), p.log()])
    candidate = torch.stack([q.log(), p.log()])  # the second row agrees: KL 0, full overlap
    kl = (0.2 * math.log(0.2 / 0.5) + 0.5 * math.log(0.5 / 0.2)) / 2
    assert compare_logits(reference, candidate, temperature=1.0, top=1) == pytest.approx((kl, 0.5))
    # top 2: {2, 1} vs {0, 1} share one of two in row 0
    assert compare_logits(reference, candidate, temperature=1.0, top=2)[1] == pytest.approx((0.5 + 1) / 2)
    # temperature 0.5 squares the probabilities before normalizing
    p2, q2 = p**2 / (p**2).sum(), q**2 / (q**2).sum()
    kl2 = float((p2 * (p2 / q2).log()).sum()) / 2
    assert compare_logits(reference, candidate, temperature=0.5)[0] == pytest.approx(kl2)
    # -inf logits (masked codes) are fine where both sides mask them
    masked = torch.tensor([[0.0, 1.0, -math.inf]])
    assert compare_logits(masked, masked.clone(), top=2) == (0.0, 1.0)
    with pytest.raises(ValueError):
        compare_logits(torch.zeros(2, 3), torch.zeros(3, 3))
