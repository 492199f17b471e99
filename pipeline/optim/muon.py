"""Muon as its authors use it: torch.optim.Muon (momentum orthogonalised by Newton-Schulz iterations) for the
network's hidden weight matrices, AdamW for everything else (the first layer, the classifier, norms, biases),
held as one optimizer, so the training loop, lr schedules and checkpoints see a single object.

torch.optim.Muon takes 2-D parameters only. A conv kernel (out, in, kh, kw) is handed to it as the matrix
(out, in * kh * kw), one row per output filter, as Keller Jordan's reference implementation flattens it: a view of
the same memory, so Muon's in-place update is the kernel's update. The order of a row's entries does not change
the orthogonalised update (Newton-Schulz commutes with permuting columns), so a channels_last kernel is viewed
as (out, kh * kw * in) instead of being copied.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


ROLE = "muon_role"  # a parameter a model marks "embedding" or "head" goes to AdamW wherever it is registered


def split_params(params: Iterable[torch.nn.Parameter]) -> tuple[list, list]:
    """(hidden matrices, the rest), both in registration order. Matrices are parameters of 2 or more dimensions
    (conv kernels, linear weights). A model that marks its embeddings and output head (the `muon_role`
    attribute: a transformer's token and position tables) has every unmarked matrix hidden; otherwise the first
    matrix (the input layer) and the last (the classifier) go with the rest."""
    params = list(params)
    matrices = [index for index, p in enumerate(params) if p.ndim >= 2]
    marked = {index for index in matrices if getattr(params[index], ROLE, None)}
    hidden = set(matrices) - marked if marked else set(matrices[1:-1])
    return [p for i, p in enumerate(params) if i in hidden], [p for i, p in enumerate(params) if i not in hidden]


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` seen as (rows, columns) without a copy: rows are its first dimension (output filters)."""
    if tensor.ndim == 2:
        return tensor
    if tensor.is_contiguous():
        return tensor.view(tensor.shape[0], -1)
    if tensor.ndim == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).view(tensor.shape[0], -1)
    raise ValueError(f"Muon needs a contiguous or channels_last kernel, got strides {tensor.stride()}")


def _grad_like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The gradient laid out as `param`'s matrix view (a copy only when its memory layout differs)."""
    if grad.stride() != param.stride():
        grad = torch.empty_like(param).copy_(grad)
    return _as_matrix(grad)


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden weight matrices, torch.optim.AdamW on the rest, one lr and weight decay for
    both: adjust_lr_fn="match_rms_adamw" scales Muon's step to AdamW's RMS (Liu et al. 2025), so that one lr is
    right for both parts. `param_groups` are the parts' own, so a scheduler sets the lr of both."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, momentum: float = 0.95,
                 weight_decay: float = 0.1, adjust_lr_fn: str = "match_rms_adamw", fused: bool | None = None,
                 foreach: bool | None = None) -> None:
        params = list(params)
        if any(isinstance(p, dict) for p in params):
            raise ValueError("MuonAdamW splits the parameters itself: pass them as a flat list")
        hidden, rest = split_params(params)
        if not hidden:
            raise ValueError("Muon needs hidden weight matrices: a network with 3 or more weight layers")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.hidden = hidden
        self.matrices = [torch.nn.Parameter(_as_matrix(p.detach())) for p in hidden]  # same memory as `hidden`
        muon = torch.optim.Muon(self.matrices, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                adjust_lr_fn=adjust_lr_fn)
        adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, fused=fused, foreach=foreach)
        self.parts = {"muon": muon, "adamw": adamw}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        parts = self.__dict__.get("parts")
        if parts is None:  # inside Optimizer.__init__, before the parts exist
            return self.__dict__["_groups"]
        return [group for part in parts.values() for group in part.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.__dict__["_groups"] = groups

    def counts(self) -> dict[str, int]:
        """How many tensors and values each part updates: what a run logs."""
        found = {}
        for name, part in self.parts.items():
            tensors = [p for group in part.param_groups for p in group["params"]]
            found[f"{name}_tensors"], found[f"{name}_numel"] = len(tensors), sum(p.numel() for p in tensors)
        return found

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for param, matrix in zip(self.hidden, self.matrices):
            matrix.grad = None if param.grad is None else _grad_like(param.grad, param)
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        rest = [p for group in self.parts["adamw"].param_groups for p in group["params"]]
        for param in (*self.hidden, *self.matrices, *rest):
            if param.grad is not None:
                param.grad = None if set_to_none else param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])
