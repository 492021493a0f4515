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

    Options for inputs of ``n_positions`` tokens ``(..., n_positions, n_dim)`` (not in the paper; they keep the codes
    from describing positions instead of cells, see the scPaLM user guide):

    * ``codebook="per_position"``: one codebook of ``n_codes`` codes per position, with its own affine statistics,
      usage counts and dead-code replacement (a dead code of position ``j`` is re-seeded from encoder outputs of
      position ``j``). Indices are local to the position (``0 … n_codes-1``); :meth:`global_indices` maps them to
      ``position * n_codes + index``.
    * ``residual=True``: quantize ``e - m_j``, the token minus a running mean of position ``j``, and add ``m_j``
      back.
    * ``warmup_steps > 0``: for the first ``warmup_steps`` training calls the input passes through unquantized (no
      VQ loss) while encoder outputs are kept; the codebook is then initialised by k-means on them.

    Usage statistics: every call returns the perplexity and number of codes used; ``code_counts`` (a buffer,
    ``n_total_codes`` long) accumulates the counts of training calls until :meth:`reset_usage`.

    Parameters
    ----------
    n_codes
        Codebook size ``K`` (128 in the paper); per position with ``codebook="per_position"``.
    n_dim
        Width of the vectors.
    beta
        Weight of the commitment loss.
    affine
        Affine reparameterisation of the codebook: ``"running"``, ``"learned"`` or ``"none"``.
    momentum
        Momentum of the running statistics of ``affine="running"`` (and of ``residual``).
    dead_code_threshold
        A code used fewer times than this between two checks is replaced. ``0`` disables replacement.
    replace_interval
        Number of training calls between two dead-code checks.
    sync_nu
        Weight of the synchronised codebook update (0 disables it).
    codebook
        ``"shared"`` (the paper: one codebook for all tokens) or ``"per_position"``.
    n_positions
        Number of token positions; needed by ``codebook="per_position"`` and ``residual``.
    residual
        Quantize each token minus a running mean of its position.
    warmup_steps
        Training calls without quantization before the k-means initialisation (0: random codes, the paper).
    kmeans_samples
        Encoder outputs kept per position (per codebook) for the k-means initialisation.

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

    One codebook per position, initialised by k-means after two unquantized calls:

    >>> vq = cf.nn.VectorQuantizer(n_codes=4, n_dim=8, codebook="per_position", n_positions=10, warmup_steps=2)
    >>> _ = vq(e), vq(e)  # warm-up: the input passes through
    >>> bool(vq.initialized), vq.get_codebook().shape
    (True, torch.Size([10, 4, 8]))
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
        codebook: Literal["shared", "per_position"] = "shared",
        n_positions: int | None = None,
        residual: bool = False,
        warmup_steps: int = 0,
        kmeans_samples: int = 1024,
    ):
        super().__init__()
        if affine not in ("running", "learned", "none"):
            msg = f"`affine` must be 'running', 'learned' or 'none', got {affine!r}."
            raise ValueError(msg)
        if codebook not in ("shared", "per_position"):
            msg = f"`codebook` must be 'shared' or 'per_position', got {codebook!r}."
            raise ValueError(msg)
        if (codebook == "per_position" or residual) and not n_positions:
            msg = "`codebook='per_position'` and `residual=True` need `n_positions`."
            raise ValueError(msg)
        if warmup_steps < 0:
            msg = f"`warmup_steps` must be >= 0, got {warmup_steps}."
            raise ValueError(msg)
        self.n_codes = n_codes
        self.n_dim = n_dim
        self.beta = beta
        self.affine = affine
        self.momentum = momentum
        self.dead_code_threshold = dead_code_threshold
        self.replace_interval = replace_interval
        self.sync_nu = sync_nu
        self.codebook_mode = codebook
        self.n_positions = int(n_positions) if n_positions else None
        self.residual = bool(residual)
        self.warmup_steps = int(warmup_steps)
        self.kmeans_samples = int(kmeans_samples)
        # G codebooks of K codes: G = 1 (shared, stored (K, d) as in the paper) or N (per position, (N, K, d))
        self.n_groups = self.n_positions if codebook == "per_position" else 1
        lead = (self.n_groups,) if codebook == "per_position" else ()
        self.codebook = nn.Parameter(torch.randn(*lead, n_codes, n_dim))  # raw codes c_i
        if affine == "learned":
            self.c_mean = nn.Parameter(torch.zeros(*lead, n_dim))
            self.c_std = nn.Parameter(torch.ones(*lead, n_dim))
        self.register_buffer("running_e_mean", torch.zeros(*lead, n_dim))
        self.register_buffer("running_e_var", torch.ones(*lead, n_dim))
        self.register_buffer("stats_initialized", torch.zeros((), dtype=torch.bool))
        if self.residual:
            self.register_buffer("position_mean", torch.zeros(self.n_positions, n_dim))
        self.register_buffer("code_counts", torch.zeros(self.n_total_codes))
        self.register_buffer("counts_since_check", torch.zeros(self.n_total_codes))
        self.register_buffer("n_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_replaced", torch.zeros((), dtype=torch.long))
        # False until the k-means initialisation of a warm-up (always True without warm-up)
        self.register_buffer("initialized", torch.tensor(self.warmup_steps == 0))
        self._samples: list[Tensor] = []

    @property
    def n_total_codes(self) -> int:
        """Number of codes of all codebooks (``n_codes``, or ``n_positions * n_codes`` per position)."""
        return self.n_groups * self.n_codes

    def global_indices(self, indices: Tensor) -> Tensor:
        """Indices ``(..., n_positions)`` -> indices into all codes (``position * n_codes + index`` per position)."""
        if self.n_groups == 1:
            return indices
        pos = torch.arange(self.n_groups, device=indices.device)
        return indices + pos * self.n_codes

    # ------------------------------------------------------------------ codebook
    def _affine_params(self) -> tuple[Tensor, Tensor]:
        """``(c_std, c_mean)`` of ``v = c_mean + c_std * c``, shape ``(G, 1, d)``."""
        g = self.n_groups
        if self.affine == "learned":
            return self.c_std.reshape(g, 1, -1), self.c_mean.reshape(g, 1, -1)
        if self.affine == "running":
            c = self.codebook.detach().reshape(g, self.n_codes, self.n_dim)
            c_mean = c.mean(1, keepdim=True)
            c_var = c.var(1, unbiased=False, keepdim=True)
            scale = (self.running_e_var.reshape(g, 1, -1) / (c_var + 1e-8)).sqrt()
            return scale, self.running_e_mean.reshape(g, 1, -1) - scale * c_mean
        ones = torch.ones(g, 1, self.n_dim, device=self.codebook.device, dtype=self.codebook.dtype)
        return ones, torch.zeros_like(ones)

    def _codebook_groups(self) -> Tensor:
        scale, shift = self._affine_params()
        return shift + scale * self.codebook.reshape(self.n_groups, self.n_codes, self.n_dim)

    def get_codebook(self) -> Tensor:
        """The effective codebook ``v = c_mean + c_std * c``.

        ``(n_codes, n_dim)``, or ``(n_positions, n_codes, n_dim)`` per position (with ``residual``, the codes of
        the residuals: the position mean is added back after quantization).
        """
        return self._codebook_groups().reshape(self.codebook.shape)

    def _to_raw(self, v: Tensor) -> Tensor:
        """Effective codes ``(G, K', d)`` -> raw codes (inverse of the affine map)."""
        scale, shift = self._affine_params()
        return (v - shift.detach()) / scale.detach().clamp_min(1e-6)

    @torch.no_grad()
    def _update_statistics(self, x: Tensor) -> None:
        """Running per-dimension statistics of ``x`` ``(R, G, d)`` (per group)."""
        mean = x.mean(0)
        var = x.var(0, unbiased=False)
        if self.n_groups == 1:
            mean, var = mean[0], var[0]
        if not bool(self.stats_initialized):
            self.running_e_mean.copy_(mean)
            self.running_e_var.copy_(var)
            self.stats_initialized.fill_(True)
        else:
            self.running_e_mean.lerp_(mean, self.momentum)
            self.running_e_var.lerp_(var, self.momentum)

    @torch.no_grad()
    def _replace_dead_codes(self, x: Tensor) -> None:
        """Re-seed dead codes of each group from encoder outputs ``x`` ``(R, G, d)`` of the same group."""
        dead = (self.counts_since_check < self.dead_code_threshold).reshape(self.n_groups, self.n_codes)
        n_dead = int(dead.sum())
        if n_dead and x.shape[0]:
            pick = torch.randint(0, x.shape[0], (self.n_groups, self.n_codes), device=x.device)
            cand = x[pick, torch.arange(self.n_groups, device=x.device)[:, None]]  # (G, K, d)
            raw = self._to_raw(cand).to(self.codebook.dtype)
            self.codebook.data.view(self.n_groups, self.n_codes, self.n_dim)[dead] = raw[dead]
            self.n_replaced += n_dead
        self.counts_since_check.zero_()

    @torch.no_grad()
    def _kmeans_init(self) -> None:
        """Set each codebook to k-means centres of the encoder outputs kept during the warm-up."""
        if self._samples:
            x = torch.cat(self._samples, 0)[-self.kmeans_samples :].transpose(0, 1).contiguous()  # (G, M, d)
            centres = kmeans(x, self.n_codes)
            if self.affine == "running":  # the affine map then reproduces the centres (up to their own scale)
                self._update_statistics(x.transpose(0, 1))
            self.codebook.data.copy_(self._to_raw(centres).reshape(self.codebook.shape).to(self.codebook.dtype))
        self._samples = []
        self.counts_since_check.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def reset_usage(self) -> None:
        """Reset the accumulated ``code_counts``."""
        self.code_counts.zero_()

    # ------------------------------------------------------------------ forward
    def _prepare(self, e: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(R, G, d)`` vectors to quantize and the per-position offset that is added back (or ``None``)."""
        if self.n_positions is not None and (self.n_groups > 1 or self.residual) and e.shape[-2] != self.n_positions:
            msg = f"expected {self.n_positions} positions on axis -2, got shape {tuple(e.shape)}"
            raise ValueError(msg)
        offset = self.position_mean if self.residual else None
        r = e if offset is None else e - offset
        return r.reshape(-1, self.n_groups, self.n_dim), offset

    def quantize(self, e: Tensor) -> Tensor:
        """Code indices of vectors ``(..., n_dim)`` (no gradient, no state update)."""
        with torch.no_grad(), torch.autocast(device_type=e.device.type, enabled=False):
            x, _ = self._prepare(e.float())
            return self._nearest(x, self._codebook_groups().float()).reshape(e.shape[:-1])

    @staticmethod
    def _nearest(x: Tensor, codebook: Tensor) -> Tensor:
        """Nearest code of each ``x`` ``(R, G, d)`` in its group's codebook ``(G, K, d)``: ``(R, G)``."""
        cross = torch.einsum("rgd,gkd->rgk", x, codebook)
        dist = (codebook * codebook).sum(-1)[None] - 2 * cross
        return dist.argmin(-1)

    def forward(self, e: Tensor) -> QuantizerOutput:
        """Quantize vectors.

        Parameters
        ----------
        e
            Encoder outputs, shape ``(..., n_dim)`` (``(..., n_positions, n_dim)`` with ``codebook="per_position"``
            or ``residual``).

        Returns
        -------
        :class:`QuantizerOutput`. In training mode the running statistics, usage counts and dead codes are
        updated as well. During the warm-up the input is returned unquantized with a zero loss.
        """
        with torch.autocast(device_type=e.device.type, enabled=False):
            e = e.float()
            update = self.training and torch.is_grad_enabled()
            if update and self.residual:
                with torch.no_grad():
                    m = e.detach().reshape(-1, self.n_positions, self.n_dim).mean(0)
                    if int(self.n_calls) > 0:
                        self.position_mean.lerp_(m, self.momentum)
                    else:
                        self.position_mean.copy_(m)
            x, offset = self._prepare(e)
            warm = not bool(self.initialized)
            if update and self.affine == "running" and not warm:
                self._update_statistics(x.detach())
            codebook = self._codebook_groups()
            with torch.no_grad():
                idx = self._nearest(x.detach(), codebook.detach())  # (R, G)
            v = codebook[torch.arange(self.n_groups, device=idx.device), idx]  # (R, G, d)
            if warm:
                loss = x.sum() * 0.0
                quantized = x
            else:
                loss = F.mse_loss(v, x.detach()) + self.beta * F.mse_loss(x, v.detach())
                quantized = x + (v - x).detach()
                if self.sync_nu:
                    quantized = quantized + self.sync_nu * (v - v.detach())
            quantized = quantized.reshape(e.shape)
            if offset is not None:
                quantized = quantized + offset
            flat_idx = (idx + torch.arange(self.n_groups, device=idx.device) * self.n_codes).reshape(-1)
            counts = torch.bincount(flat_idx, minlength=self.n_total_codes).to(e.dtype)
            p = counts / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            n_used = (counts > 0).sum()
            if update:
                with torch.no_grad():
                    self.n_calls += 1
                    if warm:
                        self._samples.append(x.detach()[torch.randperm(x.shape[0], device=x.device)[:256]])
                        kept = sum(s.shape[0] for s in self._samples)
                        while len(self._samples) > 1 and kept - self._samples[0].shape[0] >= self.kmeans_samples:
                            kept -= self._samples.pop(0).shape[0]
                        if int(self.n_calls) >= self.warmup_steps:
                            self._kmeans_init()
                    else:
                        self.code_counts += counts
                        self.counts_since_check += counts
                        if self.dead_code_threshold > 0 and int(self.n_calls) % self.replace_interval == 0:
                            self._replace_dead_codes(x.detach())
        return QuantizerOutput(quantized, idx.reshape(e.shape[:-1]), loss, perplexity.detach(), n_used.detach())


@torch.no_grad()
def kmeans(x: Tensor, k: int, n_iter: int = 25, generator: torch.Generator | None = None) -> Tensor:
    """Batched Lloyd k-means: centres ``(G, k, d)`` of ``G`` independent point sets ``x`` ``(G, M, d)``.

    Initialised with ``k`` distinct points of each set (k-means++ would cost ``k`` passes); a cluster that empties
    is re-seeded with a random point. With fewer points than ``k``, points are repeated with a small jitter.

    Examples
    --------
    >>> import torch
    >>> from cellformers.nn import kmeans
    >>> x = torch.cat([torch.randn(1, 50, 2) * 0.01, torch.randn(1, 50, 2) * 0.01 + 5], 1)
    >>> c = kmeans(x, 2)
    >>> sorted(round(float(v)) for v in c[0, :, 0])
    [0, 5]
    """
    g, m, d = x.shape
    x = x.float()
    gi = torch.arange(g, device=x.device)[:, None]
    if m >= k:
        start = torch.rand(g, m, generator=generator, device=x.device).argsort(1)[:, :k]
        c = x[gi, start].clone()
    else:
        pick = torch.randint(0, m, (g, k), generator=generator, device=x.device)
        c = x[gi, pick] + 1e-3 * x.std() * torch.randn(g, k, d, generator=generator, device=x.device)
    for _ in range(n_iter):
        assign = VectorQuantizer._nearest(x.transpose(0, 1), c).T  # (G, M)
        sums = torch.zeros_like(c).scatter_add_(1, assign[..., None].expand(-1, -1, d), x)
        n = torch.zeros(g, k, device=x.device).scatter_add_(1, assign, torch.ones(g, m, device=x.device))
        empty = n == 0
        c = torch.where(empty[..., None], c, sums / n.clamp_min(1)[..., None])
        if bool(empty.any()):
            repl = x[gi, torch.randint(0, m, (g, k), generator=generator, device=x.device)]
            c = torch.where(empty[..., None], repl, c)
    return c


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
