"""Row-wise twins of optimizers whose maths is per tensor: each row of one (N, D) parameter is updated exactly as
the original class updates a 1-D tensor of its own. The toy task descends N starting points as the N rows of one
tensor with them, so that one step of a few tensor operations replaces N steps of one tiny tensor each, and no
row's update depends on another's (tests/test_rowwise.py checks them against the originals, step by step).

Only what a 1-D tensor does in the original is here: Adafactor's unfactored second moment, Shampoo's single
preconditioner. Each class takes the original's keyword arguments, so a spec's settings build either one.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def _rows(param: torch.Tensor) -> None:
    if param.dim() != 2:
        raise ValueError(f"a row-wise optimizer takes (rows, D) parameters, got shape {tuple(param.shape)}")


class RowwiseAdafactor(torch.optim.Optimizer):
    """torch.optim.Adafactor (single-tensor path) on each row as a vector: the relative step size from the row's
    own RMS, its own second moment and its own update clipping."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0,
                 maximize: bool = False, **_: Any) -> None:
        super().__init__(params, {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
                                  "weight_decay": weight_decay, "maximize": maximize})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, (eps1, eps2) = group["lr"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                _rows(param)
                grad = -param.grad if group["maximize"] else param.grad
                state = self.state[param]
                if not state:
                    state["step"], state["variance"] = 0, torch.zeros_like(grad)
                state["step"] += 1
                step, width = float(state["step"]), param.shape[1] ** 0.5
                floor = torch.finfo(param.dtype).eps if eps1 is None else eps1
                rho = min(lr, 1 / (step ** 0.5))
                alpha = torch.linalg.vector_norm(param, dim=1, keepdim=True).div_(width).clamp_(min=eps2).mul_(rho)
                if group["weight_decay"] != 0:
                    param.mul_(1 - lr * group["weight_decay"])
                state["variance"].lerp_(grad * grad, step ** group["beta2_decay"])
                update = state["variance"].clamp(min=floor * floor).rsqrt_().mul_(grad)
                denom = torch.linalg.vector_norm(update, dim=1, keepdim=True).div_(width * group["d"]).clamp_(min=1.0)
                param.addcmul_(update, -(alpha / denom))  # one rounding, as the original's add_(alpha=...)


class RowwiseShampoo(torch.optim.Optimizer):
    """pytorch_optimizer.Shampoo on each row as a vector: its own D x D preconditioner (matrix_eps * I plus the
    sum of g g^T), inverted to the power -1/2 by SVD, and its own momentum of the preconditioned gradient."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 weight_decouple: bool = False, fixed_decay: bool = False, preconditioning_compute_steps: int = 1,
                 matrix_eps: float = 1e-6, maximize: bool = False, **_: Any) -> None:
        self.preconditioning_compute_steps = preconditioning_compute_steps
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "weight_decouple": weight_decouple, "fixed_decay": fixed_decay,
                                  "matrix_eps": matrix_eps, "maximize": maximize})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            for param in group["params"]:
                if param.grad is None:
                    continue
                _rows(param)
                grad = -param.grad if group["maximize"] else param.grad.clone()
                state = self.state[param]
                if not state:
                    self._init(state, grad, group)
                if group["momentum"] > 0.0:
                    grad.lerp_(state["momentum_buffer"], weight=group["momentum"])
                _decay(param, grad, group)
                state["pre_cond"].addcmul_(grad.unsqueeze(2), grad.unsqueeze(1))
                if group["step"] % self.preconditioning_compute_steps == 0:
                    state["inv_pre_cond"].copy_(inverse_root(state["pre_cond"], 2))
                grad = matmul(grad.unsqueeze(1), state["inv_pre_cond"]).squeeze(1)
                state["momentum_buffer"] = grad
                param.add_(grad, alpha=-group["lr"])

    @staticmethod
    def _init(state: dict, grad: torch.Tensor, group: dict) -> None:
        rows, width = grad.shape
        if group["momentum"] > 0.0:
            state["momentum_buffer"] = grad.clone()
        eye = torch.eye(width, device=grad.device).to(grad.dtype).mul_(group["matrix_eps"])
        state["pre_cond"] = eye.expand(rows, width, width).clone()
        state["inv_pre_cond"] = grad.new_zeros(rows, width, width)


def matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Batched (..., I, K) @ (..., K, J) as a chain of fused multiply-adds over K: the roundings of the original's
    one small matrix product at a time (a batched product rounds differently, and the paths drift apart)."""
    out = left[..., :, :1] * right[..., :1, :]
    for k in range(1, left.shape[-1]):
        out = torch.addcmul(out, left[..., :, k: k + 1], right[..., k: k + 1, :])
    return out


def inverse_root(matrices: torch.Tensor, power: float) -> torch.Tensor:
    """pytorch_optimizer's compute_power_svd (the matrix to the power -1/power by SVD) for a batch of matrices,
    with the same roundings as one matrix at a time."""
    dtype = torch.float64 if matrices.dtype == torch.float64 else torch.float32
    u, s, vh = torch.linalg.svd(matrices.to(dtype), full_matrices=False)
    return matmul(u * s.pow_(-1.0 / power).unsqueeze(-2), vh).to(matrices.dtype)


def _decay(param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
    """Shampoo's weight decay (pytorch_optimizer's apply_weight_decay): decoupled on the weights, or coupled
    into the gradient."""
    decay = group["weight_decay"]
    if decay == 0.0:
        return
    if group["weight_decouple"]:
        param.mul_(1.0 - decay * (1.0 if group["fixed_decay"] else group["lr"]))
    elif decay > 0.0:
        grad.add_(param, alpha=decay)

