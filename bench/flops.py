"""FLOP and parameter formulas: LLaMA matmul weights, a built LLM's frozen / LoRA weights, the
FLOPs of one training step (model, 6NT and hardware conventions)."""

from __future__ import annotations

import torch


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def llama_matmul_params(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int) -> int:
    """Weights that multiply every token in a LLaMA forward: per layer q, o (d x d), k, v
    (d x d_kv), gate/up/down (3 d x ffn), plus the LM head (vocab x d). The input embedding is a
    lookup (no FLOPs) and the norms are negligible."""
    kv = hidden // heads * kv_heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn) + vocab * hidden


def llm_matmul_params(llm) -> tuple[int, int]:
    """``(frozen, trainable)`` weights of ``nn.Linear`` layers in a built ``LanguageModel`` (LoRA
    adapters count as trainable; the embedding table is excluded)."""
    frozen = trainable = 0
    for name, module in llm.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                trainable += module.weight.numel()
            else:
                frozen += module.weight.numel()
    return frozen, trainable


def train_step_flops(
    *, frozen: int, trainable: int, layers: int, hidden: int, batch: int, seq: int, recompute: bool
) -> dict[str, float]:
    """FLOPs of one training step of the LLM on ``batch x seq`` tokens.

    ``T = batch * seq``. Each weight does 2 FLOPs per token forward (multiply + add); backward
    needs the activation gradient (2 per token per weight, for every layer the gradient passes:
    all of them, since the input projector below the LLM trains) and, only for trainable weights,
    the weight gradient (2 more). Attention scores (QK^T and AV, counted over the full S x S matrix
    as PaLM / Megatron do) cost 4 * L * d * S per token forward and twice that backward.

    * ``model`` (reported MFU): ``(2 + 2) * N_frozen * T + (2 + 2 + 2) * N_trainable * T + 12 * L * d * S * T``
      — LoRA with a frozen base: no weight gradients for the frozen matrices.
    * ``six_n``: the full fine-tuning convention ``6 * N * T + 12 * L * d * S * T`` (N = all
      weights), which over-counts a LoRA step by ``2 * N_frozen * T``.
    * ``hardware``: ``model`` + the forward recomputed under gradient checkpointing
      (``2 * N * T + 4 * L * d * S * T``) when ``recompute``.
    """
    T = batch * seq
    attn_fwd = 4 * layers * hidden * seq * T
    model = 4 * frozen * T + 6 * trainable * T + 3 * attn_fwd
    six_n = 6 * (frozen + trainable) * T + 3 * attn_fwd
    hardware = model + ((2 * (frozen + trainable) * T + attn_fwd) if recompute else 0)
    return {"model": float(model), "six_n": float(six_n), "hardware": float(hardware), "tokens": float(T)}


def sample_flops(
    *,
    body: int,
    head: int,
    lora: int,
    layers: int,
    hidden: int,
    lengths: list[int],
    labelled: int,
    rows: int,
    row_len: int,
    recompute: bool,
) -> dict[str, float]:
    """FLOPs of one training step of the LLM on a real batch: samples of ``lengths`` tokens laid
    out in ``rows x row_len`` (padded or packed), the LM head run at ``labelled`` positions.

    * ``model``: what the samples need. The frozen weights below the head (``body``) 4 FLOPs per
      useful token (forward + activation gradient: every stage trains something below the LLM or
      in its input), LoRA weights 6 (+ their weight gradient), the head 4 per labelled position,
      attention ``12 * L * d * n^2`` per sample of ``n`` tokens (QK^T and AV forward ``4 L d n^2``,
      twice that backward).
    * ``hardware``: what runs: every processed token (padding included), attention over each whole
      row (SDPA's padding and block-diagonal masks do not skip work), plus the recomputed forward of
      gradient checkpointing (``2 (body + lora) P + 4 L d row_len^2`` per row) when ``recompute``.
    """
    useful = sum(lengths)
    processed = rows * row_len
    attn = 12 * layers * hidden * sum(n * n for n in lengths)
    attn_rows = 12 * layers * hidden * rows * row_len * row_len
    model = 4 * body * useful + 6 * lora * useful + 4 * head * labelled + attn
    hardware = 4 * body * processed + 6 * lora * processed + 4 * head * labelled + attn_rows
    if recompute:
        hardware += 2 * (body + lora) * processed + attn_rows / 3
    return {
        "model": float(model),
        "hardware": float(hardware),
        "useful": float(useful),
        "processed": float(processed),
    }
