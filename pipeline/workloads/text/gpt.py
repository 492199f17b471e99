"""A character-level decoder-only transformer, nanoGPT's shape: learned token and position embeddings, pre-norm
blocks of causal self-attention and a 4x GELU MLP, a final LayerNorm and an output head (untied, so Muon's
split can hand embeddings and head to AdamW, as its authors do)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from pipeline.core.errors import UsageError, one_line
from pipeline.optim.muon import ROLE


@dataclass(frozen=True)
class GPTConfig:
    vocabulary: int
    context: int = 64
    layers: int = 4
    heads: int = 4
    width: int = 128
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                    dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(cfg.width), CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token ids (batch, length <= context) -> next-token logits (batch, length, vocabulary)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocabulary, cfg.width)
        self.positions = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocabulary, bias=False)
        self.apply(_init)
        for parameter, role in ((self.tokens.weight, "embedding"), (self.positions.weight, "embedding"),
                                (self.head.weight, "head")):
            setattr(parameter, ROLE, role)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        places = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.norm(self.blocks(self.tokens(ids) + self.positions(places))))

    @torch.no_grad()
    def generate(self, ids: list[int], length: int, temperature: float, generator: torch.Generator) -> list[int]:
        """`length` more tokens after `ids`, sampled at `temperature` (0: the most likely one each time)."""
        self.eval()
        out = list(ids)
        for _ in range(length):
            window = torch.tensor([out[-self.cfg.context:]], dtype=torch.long)
            logits = self(window)[0, -1].float()
            if temperature <= 0:
                out.append(int(logits.argmax()))
                continue
            probabilities = torch.softmax(logits / temperature, dim=-1)
            out.append(int(torch.multinomial(probabilities, 1, generator=generator)))
        return out


def _init(module: nn.Module) -> None:
    """nanoGPT's initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def load_gpt(weights: Path, shape: dict) -> tuple[GPT, str]:
    """A logged language model rebuilt from its shape (model.json) and weights, loaded weights_only (no code
    runs from the file); returns it with its vocabulary."""
    try:
        model = GPT(GPTConfig(**shape["config"]))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file is one line
        raise UsageError(f"model: {weights.parent} is not a logged shakespeare_gpt model ({one_line(error)})") \
            from None
    return model, shape["vocabulary"]
