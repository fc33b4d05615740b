"""How the CSM model's weights are held: fp32, bf16 or int8 (`ALAN_TTS_WEIGHTS=auto|fp32|bf16|int8`).

int8 is CPU only and quantizes weights per output channel and activations per ROW (`torch._int_mm`, int8 x int8
-> int32). `torch.ao` dynamic quantization is as fast but gives the whole batch one activation scale, so one
user's loud row would change another user's output in a batched speech service; with a scale per row, a row's
output is a function of that row alone, bit for bit, whatever else is in the batch.

One 8192x2048 linear on an AVX-512 CPU with avx512_bf16 (no AMX), one thread, weights not in cache, 1/8 rows:
fp32 4.3/13.5 ms, bf16 3.6/4.2 ms, int8 1.4/5.0 ms. So int8 pays off for a single speaker (and halves bf16's
memory); for batches bf16 is as fast. The Mimi codec always stays float32: it is small, and fp32 keeps the
streamed decode within float rounding of a one-shot decode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import CsmForConditionalGeneration

WeightMode = Literal["auto", "fp32", "bf16", "int8"]
ConcreteWeightMode = Literal["fp32", "bf16", "int8"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)

# Smallest absmax a scale is built from: an all-zero row/channel then quantizes to zeros instead of 0/0 = NaN,
# without a data-dependent branch (which would sync the host and break torch.compile / CUDA-graph capture).
_EPS = 1e-12
# int32 accumulation stays exact while in_features * 127 * 127 < 2**31.
_MAX_IN_FEATURES = (2**31 - 1) // (127 * 127)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it bf16 is emulated and slow.
    The probes are private torch helpers, so a torch without them reads as "no"."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_weight_mode(mode: str, device: torch.device) -> ConcreteWeightMode:
    """`auto` -> bf16 on CUDA, bf16 on a CPU with native bf16 matmuls, else fp32; the others are checked."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown TTS weight mode {mode!r}: choose one of {', '.join(WEIGHT_MODES)}")
    if mode == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return "bf16"
        return "fp32"
    if mode == "int8" and device.type != "cpu":
        raise ValueError(f"TTS weight mode 'int8' runs on the CPU only (device is {device.type}): use bf16 or fp32")
    return cast(ConcreteWeightMode, mode)


def _quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with one float32 scale per row of a 2-D float tensor: (int8 values, scales [rows, 1])."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS) / 127.0
    # clamp: x / scale may round to 127.00001 for the row's largest value
    return (x / scale).round_().clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """`y = x @ W.T + b` with W int8 per output channel and x quantized to int8 per row at every call.

    Output dtype follows the input (float32 or bf16); the arithmetic is float32 around an exact int32 product.
    No host sync and no branch on tensor values, so it can run under torch.compile or a CUDA-graph capture.

    `torch._int_mm` on the CPU (torch 2.13) takes any shape: 0..N rows, any in/out features, either operand
    layout (checked for rows 1..9, in/out 1..64), so nothing is padded. (On CUDA it would need rows > 16 and
    in/out features that are multiples of 8: one more reason int8 is CPU only.)
    """

    weight_q: Tensor  # [out, in] int8, used as its [in, out] transposed view (see __init__)
    weight_scale: Tensor  # [out] float32
    bias: Tensor | None  # [out] float32

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        if in_features > _MAX_IN_FEATURES:
            raise ValueError(f"in_features {in_features} would overflow the int32 accumulator")
        self.in_features, self.out_features = int(in_features), int(out_features)
        q, scale = _quantize_rows(weight.detach().float())  # a row of W is an output channel
        # Kept [out, in] contiguous and passed as its .T view: for one row, _int_mm then takes a gemv-like path
        # ~2x faster than with an [in, out] contiguous copy (cold weights, 8192x2048: 1.6 vs 3.4 ms on one
        # thread); for 2..16 rows the copy would be ~1.2-1.5x faster. One row is the single-speaker case, and
        # keeping both layouts would double the memory int8 is meant to save.
        self.register_buffer("weight_q", q.contiguous())
        self.register_buffer("weight_scale", scale.view(-1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).float()
        q, row_scale = _quantize_rows(rows)
        out = torch._int_mm(q, self.weight_q.T).float() * row_scale * self.weight_scale
        if self.bias is not None:  # a structural branch (fixed at build time), not on values
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8CodebooksHead(nn.Module):
    """Replaces `model.depth_decoder.codebooks_head` in int8 mode; `heads[k - 1]` is codebook k's head (an
    `Int8Linear` computing `F.linear(h, W[k - 1].T)`). The frame loop reads `heads` via `depth_head_linears`;
    `forward` mirrors transformers' `CsmCodebooksHead` so `generate()` still works (it syncs on the indices,
    which only that slow path does)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        # weight [num_codebooks - 1, depth_hidden, vocab]: head k's [out, in] matrix is weight[k].T
        self.heads = nn.ModuleList(Int8Linear(weight[k].T) for k in range(weight.shape[0]))

    def forward(self, hidden_states: Tensor, codebook_indices: Tensor) -> Tensor:
        indices = (codebook_indices - 1).tolist()
        return torch.stack([self.heads[k](hidden_states[:, i, :]) for i, k in enumerate(indices)], dim=1)


class _FloatHead:
    """Codebook `index + 1`'s float head: `F.linear(h, W[index].T)` on a view of the live parameter (no copy,
    and a later cast of the parameter is seen)."""

    def __init__(self, weight: nn.Parameter, index: int) -> None:
        self.weight, self.index = weight, index

    def __call__(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight[self.index].T)


def depth_head_linears(model: CsmForConditionalGeneration) -> list[Callable[[Tensor], Tensor]]:
    """For k = 1..num_codebooks-1, element k-1 maps the depth decoder's hidden state to codebook k's logits."""
    head = model.depth_decoder.codebooks_head
    if isinstance(head, Int8CodebooksHead):
        return list(head.heads)
    return [_FloatHead(head.weight, k) for k in range(head.weight.shape[0])]


def _swap_linears(parent: nn.Module) -> None:
    """Replace every nn.Linear under `parent` by an Int8Linear; the float module is dropped with it."""
    for name, child in list(parent.named_children()):
        if isinstance(child, nn.Linear):
            setattr(parent, name, Int8Linear.from_linear(child))
        else:
            _swap_linears(child)


def apply_weight_mode(model: CsmForConditionalGeneration, mode: ConcreteWeightMode) -> None:
    """Put the model's weights in `mode`, in place. Call it before building a frame loop on the model (the loop
    keeps references to modules and parameters it finds at construction).

    fp32/bf16: every parameter but the codec's in that dtype (buffers such as the rotary frequencies stay
    float32, as `from_pretrained(dtype=...)` leaves them). int8: float32 activations; every nn.Linear of the
    backbone, the depth decoder (its input projector included) and `lm_head` becomes an Int8Linear, the
    per-codebook heads become `Int8CodebooksHead`, and the float weights they replace are freed. Embeddings and
    norms stay float32 (a lookup reads one row: nothing to gain). Not reversible, and not meant to be saved.
    """
    if mode not in ("fp32", "bf16", "int8"):
        raise ValueError(f"apply_weight_mode takes fp32, bf16 or int8, got {mode!r}")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    with torch.no_grad():
        if mode == "int8":
            # quantized first, straight from the loaded dtype: casting a bf16 checkpoint to fp32 beforehand
            # would briefly double the model's memory for weights about to be dropped
            _swap_linears(model.backbone_model)
            _swap_linears(model.depth_decoder)
            model.lm_head = Int8Linear.from_linear(model.lm_head)
            model.depth_decoder.codebooks_head = Int8CodebooksHead(model.depth_decoder.codebooks_head.weight)
        # param.data keeps each Parameter object (tied embeddings stay tied); named_parameters lists a tied
        # parameter once
        for name, param in model.named_parameters():
            if not name.startswith("codec_model.") and param.dtype != dtype:
                param.data = param.data.to(dtype)
        model.codec_model.float()


def compare_logits(
    reference: Tensor, candidate: Tensor, temperature: float = 0.9, top: int = 50
) -> tuple[float, float]:
    """(mean KL(ref || cand) of softmax(logits / temperature), mean fraction of shared top-`top` indices) over the
    rows of `[..., vocab]` logits, in float64: how far a weight mode moves the sampling distribution."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    vocab = reference.shape[-1]
    ref = reference.detach().reshape(-1, vocab).to(torch.float64) / temperature
    cand = candidate.detach().reshape(-1, vocab).to(ref.device, torch.float64) / temperature
    log_p, log_q = ref.log_softmax(dim=-1), cand.log_softmax(dim=-1)
    p = log_p.exp()
    # where p == 0 the term is 0 (not 0 * -inf = NaN when a logit is -inf)
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)
    k = min(top, vocab)
    in_ref = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, ref.topk(k, dim=-1).indices, True)
    in_cand = torch.zeros_like(cand, dtype=torch.bool).scatter_(1, cand.topk(k, dim=-1).indices, True)
    overlap = (in_ref & in_cand).sum(dim=-1).to(torch.float64) / k
    return float(kl.mean()), float(overlap.mean())


__all__ = [
    "WEIGHT_MODES",
    "ConcreteWeightMode",
    "Int8CodebooksHead",
    "Int8Linear",
    "WeightMode",
    "apply_weight_mode",
    "compare_logits",
    "cpu_has_native_bf16",
    "depth_head_linears",
    "resolve_weight_mode",
]
