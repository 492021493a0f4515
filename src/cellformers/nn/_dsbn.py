"""Domain-specific batch normalisation (Chang et al. 2019; scFormer section 3.4, DAR paragraph)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class DomainSpecificBatchNorm1d(nn.Module):
    """Batch normalisation over the feature axis with separate statistics (and affine parameters) per domain.

    scFormer applies it to the input embedding (eq. 5), one domain per sequencing batch. Unlike a list of
    :class:`~torch.nn.BatchNorm1d` indexed by the first cell's batch (which needs every minibatch to come from a
    single batch), the statistics are computed per domain inside the minibatch, so mixed minibatches are
    normalised correctly too; with single-batch minibatches both agree.

    At evaluation, cells of a domain that was not seen in training (index ``< 0`` or ``>= n_domains``) are
    normalised with the pooled running statistics of all trained domains (mean of the domain means; mean of the
    domain variances plus the variance of the domain means) and the average affine parameters.

    Parameters
    ----------
    n_features
        Feature width (``d_model``).
    n_domains
        Number of domains (batches).
    eps
        Added to the variance (PyTorch's default ``1e-5``; scGPT uses ``6.1e-5`` to be fp16-safe).
    momentum
        Weight of the current minibatch in the running statistics.
    affine
        Learn a per-domain scale and shift (Chang et al.; scGPT's DSBN ends up without them).
    include_padding
        Count padding tokens in the statistics (scGPT's behaviour) instead of ignoring them.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> dsbn = cf.nn.DomainSpecificBatchNorm1d(n_features=8, n_domains=2)
    >>> tokens = torch.randn(6, 5, 8)  # 6 cells, 5 tokens each
    >>> domain = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> out = dsbn(tokens + 3 * domain[:, None, None], domain)  # a batch effect
    >>> out.shape
    torch.Size([6, 5, 8])
    >>> bool(out[domain == 1].mean().abs() < 1e-5)  # each domain is centred on its own statistics
    True
    """

    def __init__(
        self,
        n_features: int,
        n_domains: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        include_padding: bool = False,
    ):
        super().__init__()
        if n_domains < 1:
            msg = f"`n_domains` must be >= 1, got {n_domains}."
            raise ValueError(msg)
        self.n_features = int(n_features)
        self.n_domains = int(n_domains)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        self.include_padding = bool(include_padding)
        self.register_buffer("running_mean", torch.zeros(n_domains, n_features))
        self.register_buffer("running_var", torch.ones(n_domains, n_features))
        self.register_buffer("num_batches_tracked", torch.zeros(n_domains, dtype=torch.long))
        if affine:
            self.weight = nn.Parameter(torch.ones(n_domains, n_features))
            self.bias = nn.Parameter(torch.zeros(n_domains, n_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _pooled(self) -> tuple[Tensor, Tensor]:
        seen = self.num_batches_tracked > 0
        if not bool(seen.any()):
            seen = torch.ones_like(seen)
        mean, var = self.running_mean[seen], self.running_var[seen]
        pooled_mean = mean.mean(0)
        pooled_var = var.mean(0) + mean.var(0, unbiased=False)
        return pooled_mean, pooled_var

    def forward(self, x: Tensor, domain: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Normalise each cell's tokens with the statistics of its domain.

        Parameters
        ----------
        x
            ``(batch, length, n_features)`` tokens or ``(batch, n_features)`` vectors.
        domain
            Integer domain of each cell, shape ``(batch,)`` or ``(batch, 1)``.
        padding_mask
            Optional boolean ``(batch, length)``, ``True`` at padding tokens (left out of the statistics unless
            ``include_padding``).

        Returns
        -------
        Tensor with the shape and dtype of ``x``.
        """
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(1)
        dtype = x.dtype
        domain = domain.reshape(-1).long()
        known = (domain >= 0) & (domain < self.n_domains)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            if self.training:
                if not bool(known.all()):
                    bad = domain[~known].unique().tolist()
                    msg = f"domain indices {bad} are outside 0 … {self.n_domains - 1} in training."
                    raise ValueError(msg)
                w = torch.ones(xf.shape[:2], device=x.device, dtype=torch.float32)
                if padding_mask is not None and not self.include_padding:
                    w = (~padding_mask).float()
                onehot = F.one_hot(domain, self.n_domains).float()  # (B, D)
                count = onehot.T @ w.sum(1)  # (D,)
                s1 = onehot.T @ (xf * w.unsqueeze(-1)).sum(1)  # (D, F)
                mean = s1 / count.clamp_min(1.0).unsqueeze(-1)
                centred = xf - mean[domain].unsqueeze(1)
                s2 = onehot.T @ (centred.square() * w.unsqueeze(-1)).sum(1)
                var = s2 / count.clamp_min(1.0).unsqueeze(-1)
                present = count > 0
                with torch.no_grad():
                    m = self.momentum
                    unbiased = var * (count / (count - 1).clamp_min(1.0)).unsqueeze(-1)
                    upd_mean = (1 - m) * self.running_mean + m * mean
                    upd_var = (1 - m) * self.running_var + m * unbiased
                    self.running_mean.copy_(torch.where(present.unsqueeze(-1), upd_mean, self.running_mean))
                    self.running_var.copy_(torch.where(present.unsqueeze(-1), upd_var, self.running_var))
                    self.num_batches_tracked += present.long()
                cell_mean, cell_var = mean[domain], var[domain]
            else:
                safe = domain.clamp(0, self.n_domains - 1)
                pooled_mean, pooled_var = self._pooled()
                k = known.unsqueeze(-1)
                cell_mean = torch.where(k, self.running_mean[safe], pooled_mean)
                cell_var = torch.where(k, self.running_var[safe], pooled_var)
            y = (xf - cell_mean.unsqueeze(1)) * torch.rsqrt(cell_var.unsqueeze(1) + self.eps)
            if self.affine:
                safe = domain.clamp(0, self.n_domains - 1)
                k = known.unsqueeze(-1)
                weight = torch.where(k, self.weight[safe], self.weight.mean(0))
                bias = torch.where(k, self.bias[safe], self.bias.mean(0))
                y = y * weight.unsqueeze(1) + bias.unsqueeze(1)
        y = y.to(dtype)
        return y.squeeze(1) if squeeze else y
