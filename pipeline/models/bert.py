"""A BERT-like encoder in plain torch, written to export cleanly to ONNX opset 17 for TensorRT 8.6.

Attention is spelled out as MatMul -> Mul(scale) -> Add(mask) -> Softmax -> MatMul rather than
``scaled_dot_product_attention``, so the TorchScript exporter emits only ops that opset 17 and
TensorRT 8.6's parser know (no fused attention op). The mask bias is -10000, not -inf or the float32
minimum, so it stays finite in FP16 engines. GELU is the exact (erf) form, as in BERT.

This module imports torch at module level; it is imported only when the model is built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Additive attention bias for padded positions: large enough to zero the softmax, finite in FP16.
MASK_BIAS = -10000.0


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit MatMul/Softmax."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (N, S, H) -> (N, heads, S, head_dim). Batch and sequence are read from the tensor, so the
        # traced graph computes them (Shape ops) instead of baking in the example's batch size.
        n, s = x.shape[0], x.shape[1]
        return x.reshape(n, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        n, s = x.shape[0], x.shape[1]
        return self.out(ctx.transpose(1, 2).reshape(n, s, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer (BERT): attention + residual + LayerNorm, FFN + residual + LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, mask_bias))
        return self.norm2(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """BERT-style encoder: token + position (+ segment 0) embeddings, ``layers`` encoder layers.

    Args:
        vocab_size: token vocabulary (30522 for BERT's uncased WordPiece).
        hidden: model width.
        layers: number of encoder layers.
        heads: attention heads (``hidden`` must be divisible by it).
        intermediate: feed-forward width.
        max_positions: size of the position table (>= the sequence length used).
        output: ``last_hidden_state`` -> (N, S, hidden); ``pooled`` -> tanh(dense(h[:, 0])), (N, hidden).
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden: int = 768,
        layers: int = 12,
        heads: int = 12,
        intermediate: int = 3072,
        max_positions: int = 512,
        output: str = "last_hidden_state",
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate) for _ in range(layers))
        self.output = output
        self.pooler = nn.Linear(hidden, hidden) if output == "pooled" else None
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(self.position_ids[:, :seq])
            + self.token_type_embeddings.weight[0]  # single-segment input: segment id 0 everywhere
        )
        x = self.embed_norm(x)
        # (N, S) mask of 1 (attend) / 0 (pad) -> (N, 1, 1, S) additive bias broadcast over heads and queries.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_BIAS
        for layer in self.layers:
            x = layer(x, mask_bias)
        if self.pooler is not None:
            return torch.tanh(self.pooler(x[:, 0]))
        return x


class MeanPooledEncoder(nn.Module):
    """Wraps a Hugging Face encoder: masked mean over tokens, then optional L2 normalisation.

    This is what sentence-transformers' ``Pooling(mean) + Normalize`` computes, as one exportable graph.
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # Clamp the token count so an all-padding row gives zeros instead of NaN.
        emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
        return emb
