"""Many independent class-balanced linear SVMs solved at once in torch (CPU or CUDA, float32).

Objective of every problem (the one scikit-learn's ``LinearSVC(loss="squared_hinge", class_weight="balanced")``
minimises, liblinear's regularised intercept included):

    min_{w,b}  0.5 (|w|^2 + b^2) + C * sum_i c_i * max(0, 1 - y_i (w.x_i + b))^2,   c_i = n / (2 n_{y_i})

Problems share data in a padded batch ``X [K, n, d]``; problem (k, j) trains on the samples of group k selected
by ``mask[k, j]`` with its own ``C[k, j]``, so a grid of C values and cross-validation folds of K groups become
K x m columns of one solve. The solver is a batched truncated Newton method (Newton-CG with Hessian-vector
products and an Armijo line search, the idea of liblinear's primal solver): no d x d Hessian is ever formed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

log = logging.getLogger(__name__)


@dataclass
class LinearSVMResult:
    """Solutions of K x m SVM problems: weights, intercepts, decision values and solver statistics."""

    coef: torch.Tensor  # [K, m, d]
    intercept: torch.Tensor  # [K, m]
    decision: torch.Tensor  # [K, m, n] decision values w.x + b on every (padded) sample of the group
    converged: torch.Tensor  # [K, m] bool
    n_iter: int  # Newton iterations run
    n_cg_iter: int  # conjugate-gradient iterations run in total (each costs one pass over X)


class _Batch:
    """The data of K groups with fast X @ w and r @ X products (both as row-major batched matmuls)."""

    def __init__(self, X: torch.Tensor, fit_intercept: bool, transposed_copy: bool):
        self.X = X
        self.transposed_copy = transposed_copy
        # With few columns, a contiguous transposed copy makes W @ X^T ~2x faster on CPU than the strided view.
        self.Xt = X.transpose(1, 2).contiguous() if X.device.type == "cpu" and transposed_copy else X.transpose(1, 2)
        self.fit_intercept = fit_intercept

    def subset(self, keep: torch.Tensor) -> "_Batch":
        """The groups selected by the bool mask `keep` (a copy of their rows)."""
        return _Batch(self.X[keep], self.fit_intercept, self.transposed_copy)

    def forward(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[K, m, d], [K, m] -> decision values [K, m, n]."""
        Z = torch.bmm(W, self.Xt)
        return Z + b.unsqueeze(-1) if self.fit_intercept else Z

    def backward(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K, m, n] -> (R @ X [K, m, d], row sums [K, m])."""
        gb = R.sum(-1) if self.fit_intercept else torch.zeros(R.shape[:2], dtype=R.dtype, device=R.device)
        return torch.bmm(R, self.X), gb


def _as_columns(C: float | Sequence[float] | torch.Tensor, K: int, device: torch.device) -> torch.Tensor:
    """C as a [K, m] tensor of positive values (checked)."""
    C = torch.as_tensor(C, dtype=torch.float32, device=device)
    if C.dim() == 0:
        C = C.reshape(1, 1)
    elif C.dim() == 1:
        C = C.unsqueeze(0)
    if C.dim() != 2 or C.shape[0] not in (1, K):
        raise ValueError(f"C must be a float, a [m] sequence or a [K, m] tensor, got shape {tuple(C.shape)}")
    if not bool((C > 0).all()):
        raise ValueError("every C must be > 0")
    return C.expand(K, C.shape[1])


def balanced_weights(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample class weights n / (2 n_class) of scikit-learn's class_weight="balanced" within each mask."""
    yb = y.unsqueeze(1) if mask.dim() == 3 else y
    m = mask.float()
    n_pos = (m * yb).sum(-1, keepdim=True)
    n_neg = (m * (1 - yb)).sum(-1, keepdim=True)
    n = n_pos + n_neg
    w_pos = n / (2 * n_pos.clamp(min=1))
    w_neg = n / (2 * n_neg.clamp(min=1))
    return m * torch.where(yb > 0, w_pos, w_neg)


def linear_svm(
    X: torch.Tensor,
    y: torch.Tensor,
    C: float | Sequence[float] | torch.Tensor = 1.0,
    *,
    mask: torch.Tensor | None = None,
    class_weight: str | None = "balanced",
    fit_intercept: bool = True,
    tol: float = 1e-2,
    max_iter: int = 50,
    cg_tol: float = 0.1,
    max_cg_iter: int = 100,
    init: LinearSVMResult | None = None,
) -> LinearSVMResult:
    """Fit K x m independent L2-regularised squared-hinge linear SVMs (class-balanced by default) in one batch.

    X: [K, n, d] (or [n, d] for one group) float features; rows masked out everywhere may hold any finite values.
    y: [K, n] bool/0-1 targets (1 = positive class). C: one value, m values, or a [K, m] tensor.
    mask: [K, n] or [K, m, n] bool, which samples each problem trains on (default: all).
    tol: stop a problem when |grad| <= tol * |grad at w=0|. init: warm start from an earlier result.
    """
    if X.dim() == 2:
        X = X.unsqueeze(0)
        y = y.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if X.dim() != 3 or y.shape != X.shape[:2]:
        raise ValueError(f"X must be [K, n, d] and y [K, n]; got {tuple(X.shape)} and {tuple(y.shape)}")
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if tol <= 0 or max_iter < 1 or cg_tol <= 0 or max_cg_iter < 1:
        raise ValueError("tol and cg_tol must be > 0, max_iter and max_cg_iter >= 1")
    K, n, d = X.shape
    device = X.device
    X = X.float()
    yf = y.to(device=device, dtype=torch.float32)
    Ccols = _as_columns(C, K, device)
    if mask is None:
        mask = torch.ones(K, n, dtype=torch.bool, device=device)
    mask = mask.to(device)
    if mask.dim() == 2:
        mask = mask.unsqueeze(1)
    m = max(Ccols.shape[1], mask.shape[1])
    if Ccols.shape[1] not in (1, m) or mask.shape[1] not in (1, m) or mask.shape[2] != n:
        raise ValueError(f"C columns ({Ccols.shape[1]}) and mask columns ({mask.shape[1]}) must match or be 1")
    mask = mask.expand(K, m, n)
    Ccols = Ccols.expand(K, m)
    if init is not None and tuple(init.coef.shape) != (K, m, d):
        raise ValueError(f"init holds {tuple(init.coef.shape)} weights, this problem needs {(K, m, d)}")
    cw = balanced_weights(yf, mask) if class_weight == "balanced" else mask.float()
    A = (cw * Ccols.unsqueeze(-1)).contiguous()  # loss weight of every sample in every problem [K, m, n]
    sgn = (2 * yf - 1).unsqueeze(1)  # +-1 [K, 1, n]
    batch = _Batch(X, fit_intercept, transposed_copy=m <= 4)
    return _newton_cg(batch, A, sgn, tol, max_iter, cg_tol, max_cg_iter, init)


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products over the last dim: [K, m, d] x [K, m, d] -> [K, m]."""
    return (a * b).sum(-1)


def _newton_cg(
    batch: _Batch,
    A: torch.Tensor,
    sgn: torch.Tensor,
    tol: float,
    max_iter: int,
    cg_tol: float,
    max_cg_iter: int,
    init: LinearSVMResult | None,
) -> LinearSVMResult:
    """Batched truncated Newton; finished problems stop, and groups whose problems all finished leave the batch."""
    K, m, n = A.shape
    d = batch.X.shape[2]
    dev = A.device
    W = torch.zeros(K, m, d, device=dev) if init is None else init.coef.clone()
    b = torch.zeros(K, m, device=dev) if init is None else init.intercept.clone()
    out_W, out_b, out_Z = torch.empty_like(W), torch.empty_like(b), torch.empty_like(A)
    out_done = torch.zeros(K, m, dtype=torch.bool, device=dev)
    rows = torch.arange(K, device=dev)  # groups still in the working batch

    def grad(W, b, Z):
        """Gradient of every problem's objective at (W, b), given Z = X W + b; also the margins 1 - y z."""
        margin = 1 - sgn * Z
        gW, gb = batch.backward(-2 * A * sgn * margin.clamp(min=0))
        return W + gW, b + gb if batch.fit_intercept else gb, margin

    # The gradient at w = 0 sets the scale of the stopping rule (as in liblinear).
    g0 = _norm(*batch.backward(-2 * A * sgn))
    Z = batch.forward(W, b)
    gW, gb, margin = grad(W, b, Z)
    done = torch.zeros(K, m, dtype=torch.bool, device=dev)  # sticky: converged, or stalled at float32 precision
    n_cg = it = 0
    while it < max_iter:
        done |= _norm(gW, gb) <= tol * g0
        keep = ~done.all(1)
        if int(keep.sum()) <= 0.75 * len(keep):  # shrink the working batch: copy out finished groups
            gone = rows[~keep]
            out_W[gone], out_b[gone], out_Z[gone], out_done[gone] = W[~keep], b[~keep], Z[~keep], done[~keep]
            rows, W, b, Z, A, sgn, g0, done = (t[keep] for t in (rows, W, b, Z, A, sgn, g0, done))
            gW, gb, margin = gW[keep], gb[keep], margin[keep]
            batch = batch.subset(keep)
        if not len(rows):
            break
        it += 1
        active = ~done
        D = 2 * A * (margin > 0)  # generalised Hessian weights
        sW, sb, sZ, k = _cg(batch, D, gW, gb, active, cg_tol, max_cg_iter)
        n_cg += k
        step = _armijo(W, b, Z, gW, gb, sW, sb, sZ, A, sgn, margin, active)
        W += step.unsqueeze(-1) * sW
        b += step * sb
        Z += step.unsqueeze(-1) * sZ
        gW, gb, margin = grad(W, b, Z)
        done |= active & (step * _norm(sW, sb) <= 1e-6 * _norm(W, b))  # no further progress possible
        log.debug("linear_svm: Newton iteration %d, %d problems active, %d CG iterations so far",
                  it, int(active.sum()), n_cg)
    done |= _norm(gW, gb) <= tol * g0
    out_W[rows], out_b[rows], out_Z[rows], out_done[rows] = W, b, Z, done
    log.debug("linear_svm: %d x %d problems, %d Newton / %d CG iterations, %d not converged",
              K, m, it, n_cg, int((~out_done).sum()))
    return LinearSVMResult(out_W, out_b, out_Z, out_done, it, n_cg)


def _norm(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of (w, b) per problem: [K, m, d], [K, m] -> [K, m]."""
    return (_bdot(w, w) + b**2).sqrt()


def _cg(
    batch: _Batch,
    D: torch.Tensor,
    gW: torch.Tensor,
    gb: torch.Tensor,
    active: torch.Tensor,
    cg_tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Conjugate gradients on H s = -g for every active problem; returns s, X s (accumulated on the side) and #iters."""
    K, m, n = D.shape
    sW, sb, sZ = torch.zeros_like(gW), torch.zeros_like(gb), torch.zeros_like(D)
    rW, rb = -gW * active.unsqueeze(-1), -gb * active
    pW, pb = rW.clone(), rb.clone()
    rr = _bdot(rW, rW) + rb**2
    target = cg_tol * rr.sqrt()
    on = active.clone()
    for k in range(1, max_iter + 1):
        cols = torch.nonzero(on.any(0)).flatten()  # columns with CG still running in some group
        Tp, HpW, Hpb = torch.zeros_like(D), pW.clone(), pb.clone()
        if len(cols) == m:
            Tp = batch.forward(pW, pb)
            dW, db = batch.backward(D * Tp)
        else:
            Tp[:, cols] = batch.forward(pW[:, cols], pb[:, cols])
            dW, db = torch.zeros_like(pW), torch.zeros_like(pb)
            dW[:, cols], db[:, cols] = batch.backward(D[:, cols] * Tp[:, cols])
        HpW += dW
        Hpb = Hpb + db if batch.fit_intercept else db
        alpha = torch.where(on, rr / (_bdot(pW, HpW) + pb * Hpb).clamp(min=1e-30), torch.zeros_like(rr))
        sW += alpha.unsqueeze(-1) * pW
        sb += alpha * pb
        sZ += alpha.unsqueeze(-1) * Tp
        rW -= alpha.unsqueeze(-1) * HpW
        rb -= alpha * Hpb
        rr_new = _bdot(rW, rW) + rb**2
        on &= rr_new.sqrt() > target
        if not bool(on.any()):
            break
        beta = rr_new / rr.clamp(min=1e-30)
        pW = rW + beta.unsqueeze(-1) * pW
        pb = rb + beta * pb
        rr = rr_new
    return sW, sb, sZ, k


def _armijo(W, b, Z, gW, gb, sW, sb, sZ, A, sgn, margin, active) -> torch.Tensor:
    """Backtracking step sizes along s meeting the Armijo condition, evaluated on Z + t X s (no pass over X)."""
    gs = _bdot(gW, sW) + gb * sb
    ws, ss = _bdot(W, sW) + b * sb, _bdot(sW, sW) + sb**2
    hinge0 = (A * margin.clamp(min=0) ** 2).sum(-1)
    step = active.float()
    todo = active.clone()
    for _ in range(30):
        m_new = 1 - sgn * (Z + step.unsqueeze(-1) * sZ)
        df = step * ws + 0.5 * step**2 * ss + (A * m_new.clamp(min=0) ** 2).sum(-1) - hinge0  # f(w + t s) - f(w)
        todo &= ~(df <= 0.01 * step * gs)
        if not bool(todo.any()):
            break
        step = torch.where(todo, step * 0.5, step)
    return torch.where(todo, torch.zeros_like(step), step)  # no decrease found: keep the iterate
