"""Vector quantizer with affine reparameterisation and dead-code replacement (Huh et al. 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class QuantizerOutput(NamedTuple):
    """Output of :class:`VectorQuantizer`.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> out = cf.nn.VectorQuantizer(n_codes=16, n_dim=8)(torch.randn(4, 10, 8))
    >>> isinstance(out, cf.nn.QuantizerOutput)
    True
    >>> out.quantized.shape, out.indices.shape, out.loss.shape
    (torch.Size([4, 10, 8]), torch.Size([4, 10]), torch.Size([]))
    """

    quantized: Tensor
    """Quantized vectors (straight-through), same shape as the input."""
    indices: Tensor
    """Code index of every input vector, the input shape without its last axis."""
    loss: Tensor
    """Codebook + ``beta`` × commitment loss (scalar)."""
    perplexity: Tensor
    """``exp`` of the entropy of the code histogram of this call (scalar)."""
    n_used: Tensor
    """Number of distinct codes used in this call (scalar)."""


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with the stabilising techniques of Huh et al. (2023).

    scPaLM :cite:p:`scPaLM`, section 3.2 and appendix A.2. Each input vector ``e`` is replaced by its nearest code
    ``v_k = argmin_k ||v_k - e||``; the gradient passes straight through. Codes are learned by gradient (the
    codebook term ``||v_k - sg(e)||²``), and the encoder by the commitment term ``beta ||e - sg(v_k)||²``.

    * **Affine reparameterisation**: the codebook is ``v_i = c_mean + c_std * c_i`` with shared ``c_mean``,
      ``c_std`` (appendix A.2). ``affine="running"`` sets them from running statistics so that the codebook has the
      per-dimension mean and variance of the encoder outputs (``c_std = sqrt(var_e / var_c)``,
      ``c_mean = mean_e - c_std * mean_c``); ``affine="learned"`` makes them parameters; ``affine="none"`` uses
      the raw codes.
    * **Dead-code replacement**: every ``replace_interval`` training calls, codes chosen fewer than
      ``dead_code_threshold`` times since the last check are re-initialised to randomly chosen encoder outputs of
      the current call (mapped back through the affine transform).
    * **Synchronised update** (optional, ``sync_nu > 0``): the codes also receive ``sync_nu`` times the task
      gradient of the quantized output.

    Usage statistics: every call returns the perplexity and number of codes used; ``code_counts`` (a buffer)
    accumulates the counts of training calls until :meth:`reset_usage`.

    Parameters
    ----------
    n_codes
        Codebook size ``K`` (128 in the paper).
    n_dim
        Width of the vectors.
    beta
        Weight of the commitment loss.
    affine
        Affine reparameterisation of the codebook: ``"running"``, ``"learned"`` or ``"none"``.
    momentum
        Momentum of the running statistics of ``affine="running"``.
    dead_code_threshold
        A code used fewer times than this between two checks is replaced. ``0`` disables replacement.
    replace_interval
        Number of training calls between two dead-code checks.
    sync_nu
        Weight of the synchronised codebook update (0 disables it).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> vq = cf.nn.VectorQuantizer(n_codes=16, n_dim=8)
    >>> e = torch.randn(4, 10, 8, requires_grad=True)  # encoder outputs
    >>> out = vq(e)
    >>> out.quantized.shape, out.indices.shape
    (torch.Size([4, 10, 8]), torch.Size([4, 10]))
    >>> torch.allclose(out.quantized, vq.get_codebook()[out.indices])  # each vector is replaced by a code
    True
    >>> out.loss.backward()  # codebook + commitment terms
    >>> cf.nn.codebook_usage(vq.code_counts)["n_codes"]
    16
    """

    def __init__(
        self,
        n_codes: int = 128,
        n_dim: int = 256,
        beta: float = 0.25,
        affine: Literal["running", "learned", "none"] = "running",
        momentum: float = 0.1,
        dead_code_threshold: float = 1.0,
        replace_interval: int = 20,
        sync_nu: float = 0.0,
    ):
        super().__init__()
        if affine not in ("running", "learned", "none"):
            msg = f"`affine` must be 'running', 'learned' or 'none', got {affine!r}."
            raise ValueError(msg)
        self.n_codes = n_codes
        self.n_dim = n_dim
        self.beta = beta
        self.affine = affine
        self.momentum = momentum
        self.dead_code_threshold = dead_code_threshold
        self.replace_interval = replace_interval
        self.sync_nu = sync_nu
        self.codebook = nn.Parameter(torch.randn(n_codes, n_dim))  # raw codes c_i
        if affine == "learned":
            self.c_mean = nn.Parameter(torch.zeros(n_dim))
            self.c_std = nn.Parameter(torch.ones(n_dim))
        self.register_buffer("running_e_mean", torch.zeros(n_dim))
        self.register_buffer("running_e_var", torch.ones(n_dim))
        self.register_buffer("stats_initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("code_counts", torch.zeros(n_codes))
        self.register_buffer("counts_since_check", torch.zeros(n_codes))
        self.register_buffer("n_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_replaced", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ codebook
    def _affine_params(self) -> tuple[Tensor, Tensor]:
        """``(c_std, c_mean)`` of ``v = c_mean + c_std * c``."""
        if self.affine == "learned":
            return self.c_std, self.c_mean
        if self.affine == "running":
            c = self.codebook.detach()
            c_mean = c.mean(0)
            c_var = c.var(0, unbiased=False)
            scale = (self.running_e_var / (c_var + 1e-8)).sqrt()
            return scale, self.running_e_mean - scale * c_mean
        ones = torch.ones(self.n_dim, device=self.codebook.device, dtype=self.codebook.dtype)
        return ones, torch.zeros_like(ones)

    def get_codebook(self) -> Tensor:
        """The effective codebook ``v = c_mean + c_std * c``, ``(n_codes, n_dim)``."""
        scale, shift = self._affine_params()
        return shift + scale * self.codebook

    @torch.no_grad()
    def _update_statistics(self, flat: Tensor) -> None:
        mean = flat.mean(0)
        var = flat.var(0, unbiased=False)
        if not bool(self.stats_initialized):
            self.running_e_mean.copy_(mean)
            self.running_e_var.copy_(var)
            self.stats_initialized.fill_(True)
        else:
            self.running_e_mean.lerp_(mean, self.momentum)
            self.running_e_var.lerp_(var, self.momentum)

    @torch.no_grad()
    def _replace_dead_codes(self, flat: Tensor) -> None:
        dead = self.counts_since_check < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead and flat.shape[0]:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            scale, shift = self._affine_params()
            raw = (flat[pick] - shift.detach()) / scale.detach().clamp_min(1e-6)
            self.codebook.data[dead] = raw.to(self.codebook.dtype)
            self.n_replaced += n_dead
        self.counts_since_check.zero_()

    @torch.no_grad()
    def reset_usage(self) -> None:
        """Reset the accumulated ``code_counts``."""
        self.code_counts.zero_()

    # ------------------------------------------------------------------ forward
    def quantize(self, e: Tensor) -> Tensor:
        """Code indices of vectors ``(..., n_dim)`` (no gradient, no state update)."""
        with torch.no_grad(), torch.autocast(device_type=e.device.type, enabled=False):
            flat = e.reshape(-1, self.n_dim).float()
            return self._nearest(flat, self.get_codebook().float()).reshape(e.shape[:-1])

    @staticmethod
    def _nearest(flat: Tensor, codebook: Tensor) -> Tensor:
        dist = (flat * flat).sum(1, keepdim=True) - 2 * flat @ codebook.T + (codebook * codebook).sum(1)[None]
        return dist.argmin(1)

    def forward(self, e: Tensor) -> QuantizerOutput:
        """Quantize vectors.

        Parameters
        ----------
        e
            Encoder outputs, shape ``(..., n_dim)``.

        Returns
        -------
        :class:`QuantizerOutput`. In training mode the running statistics, usage counts and dead codes are
        updated as well.
        """
        with torch.autocast(device_type=e.device.type, enabled=False):
            e = e.float()
            flat = e.reshape(-1, self.n_dim)
            update = self.training and torch.is_grad_enabled()
            if update and self.affine == "running":
                self._update_statistics(flat.detach())
            codebook = self.get_codebook()
            with torch.no_grad():
                idx = self._nearest(flat.detach(), codebook.detach())
            v = codebook[idx]
            loss = F.mse_loss(v, flat.detach()) + self.beta * F.mse_loss(flat, v.detach())
            quantized = flat + (v - flat).detach()
            if self.sync_nu:
                quantized = quantized + self.sync_nu * (v - v.detach())
            counts = torch.bincount(idx, minlength=self.n_codes).to(flat.dtype)
            p = counts / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            n_used = (counts > 0).sum()
            if update:
                with torch.no_grad():
                    self.code_counts += counts
                    self.counts_since_check += counts
                    self.n_calls += 1
                    if self.dead_code_threshold > 0 and int(self.n_calls) % self.replace_interval == 0:
                        self._replace_dead_codes(flat.detach())
        return QuantizerOutput(
            quantized.reshape(e.shape), idx.reshape(e.shape[:-1]), loss, perplexity.detach(), n_used.detach()
        )


def codebook_usage(counts: Tensor) -> dict[str, float]:
    """Perplexity, number of used and dead codes from a ``(n_codes,)`` count vector.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> cf.nn.codebook_usage(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    {'perplexity': 2.0, 'n_used': 2, 'n_dead': 2, 'n_codes': 4, 'fraction_used': 0.5}
    """
    counts = counts.double()
    total = counts.sum()
    p = counts / total.clamp_min(1)
    perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum())) if total > 0 else 0.0
    n_used = int((counts > 0).sum())
    return {
        "perplexity": perplexity,
        "n_used": n_used,
        "n_dead": int(counts.numel()) - n_used,
        "n_codes": int(counts.numel()),
        "fraction_used": n_used / max(1, counts.numel()),
    }
