"""scPaLM's pathway readouts: the codes of each cell's tokens, codebook usage, and the genes behind each code."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from cellformers.nn import codebook_usage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["ScPaLMPathwaysMixin"]


class ScPaLMPathwaysMixin:
    """Codebook and pathway getters of :class:`~cellformers.model.ScPaLM` (the stage-1 vector quantizer)."""

    @torch.inference_mode()
    def get_pathway_codes(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
    ) -> np.ndarray:
        """Codebook index of each of the ``N`` pathway tokens of each cell.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Minibatch size for inference.
        precision
            ``"bf16"`` or ``"16"`` to run under autocast.

        Returns
        -------
        Integer array ``(n_cells, N)``.
        """
        self._require_stage(1, "`get_pathway_codes`")
        fn = lambda t: self.module.get_pathway_tokens(t[REGISTRY_KEYS.X_KEY].to(self.device))[1].float()
        return self._predict_batches(fn, adata, indices, batch_size, precision).astype(np.int64)

    def get_codebook_usage(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """How many of the ``K`` codes the pathway tokens of the data use.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        ``{"perplexity", "n_used", "n_dead", "n_codes", "fraction_used"}``: the perplexity (``exp`` of the entropy
        of the code histogram over all tokens of all cells; ``K`` when uniform), the number of codes used at least
        once, of unused ("dead") codes, ``K``, and ``n_used / K``.
        """
        codes = self._global_codes(self.get_pathway_codes(adata, indices, batch_size))
        counts = np.bincount(codes.ravel(), minlength=self.module.quantizer.n_total_codes)
        return codebook_usage(torch.from_numpy(counts))

    def _global_codes(self, codes: np.ndarray) -> np.ndarray:
        """Local code indices ``(n_cells, N)`` -> indices into all codes (per-position codebooks: ``j * K + k``)."""
        return self.module.quantizer.global_indices(torch.from_numpy(codes)).numpy()

    def get_codebook_statistics(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Whether the pathway codes tell the cells apart, position by position.

        The usage of :meth:`get_codebook_usage` is counted over all tokens, so a codebook that only encodes the
        position looks healthy there. These statistics are taken at each position over the cells.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        ``{"codes_per_position", "codes_per_position_min", "code_entropy", "code_entropy_max", "distinct_cells",
        "n_cells", "n_positions", "n_codes", "codebook"}``: the number of distinct codes among the cells at a
        position (mean and minimum over positions), the entropy in bits of the code distribution over the cells at a
        position (mean over positions) and its ceiling ``log2(min(K, n_cells))``, the number of distinct code
        sequences (cells the codes tell apart), and the sizes.
        """
        codes = self.get_pathway_codes(adata, indices, batch_size)
        n_cells, n_pos = codes.shape
        k = self.module.quantizer.n_codes
        distinct = np.array([np.unique(codes[:, j]).size for j in range(n_pos)])
        entropy = []
        for j in range(n_pos):
            p = np.bincount(codes[:, j], minlength=k) / max(1, n_cells)
            p = p[p > 0]
            entropy.append(float(-(p * np.log2(p)).sum()))
        return {
            "codes_per_position": float(distinct.mean()),
            "codes_per_position_min": int(distinct.min()),
            "code_entropy": float(np.mean(entropy)),
            "code_entropy_max": float(np.log2(max(1, min(k, n_cells)))),
            "distinct_cells": int(np.unique(codes, axis=0).shape[0]),
            "n_cells": int(n_cells),
            "n_positions": int(n_pos),
            "n_codes": int(k),
            "codebook": self.module.quantizer.codebook_mode,
        }

    def get_pathway_gene_scores(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Association of genes with pathway tokens (appendix A.4), as a codes × genes table.

        For each cell, each code ``k`` activated by its pathway tokens adds the cell's raw count vector, scaled by
        the frequency of ``k`` among the cell's ``N`` tokens, to row ``k``. Each column (gene) is then divided by
        its sum, so a value is the share of the gene's (frequency-weighted) expression that goes to the code.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        DataFrame ``(n_codes_total, n_genes_in_vocab)`` indexed by code (``N · K`` with per-position codebooks, ``K``
        with the paper's shared one), columns = gene names; genes without counts have 0.
        """
        from scipy import sparse

        adata_ = self._validate_anndata(adata)
        codes = self._global_codes(self.get_pathway_codes(adata_, indices, batch_size))
        n_cells, n_tok = codes.shape
        k = self.module.quantizer.n_total_codes
        rows = np.repeat(np.arange(n_cells), n_tok)
        freq = sparse.csr_matrix(
            (np.full(codes.size, 1.0 / n_tok), (rows, codes.ravel())), shape=(n_cells, k)
        )  # duplicates are summed: frequency of each code in each cell
        x = self.get_anndata_manager(adata_, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        if indices is not None:
            x = x[np.asarray(indices)]
        cols = self.module.input_columns.cpu().numpy()
        x = x[:, cols]
        scores = freq.T @ x
        scores = scores.toarray() if sparse.issparse(scores) else np.asarray(scores)
        total = scores.sum(0, keepdims=True)
        scores = np.divide(scores, total, out=np.zeros_like(scores, dtype=np.float64), where=total > 0)
        names = np.asarray(adata_.var_names)[cols]
        return pd.DataFrame(scores, index=pd.RangeIndex(k, name="code"), columns=names)

    def get_pathway_genes(
        self,
        adata: AnnData | None = None,
        n_genes: int = 10,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        min_cells: int = 0,
    ) -> pd.DataFrame:
        """The ``n_genes`` genes most associated with each pathway token (appendix A.4, section B.5).

        Uses :meth:`get_pathway_gene_scores` and keeps, for each code used by the data, the genes with the highest
        scores.

        Parameters
        ----------
        adata
            AnnData; ``None`` uses the registered one.
        n_genes
            Genes per pathway token (10 in section B.5).
        indices
            Cells to use; ``None`` for all.
        batch_size
            Minibatch size for inference.
        min_cells
            Only consider genes detected in at least this many cells (0: all genes, as in the paper; a small
            threshold avoids genes seen in a single cell, whose score is trivially concentrated).

        Returns
        -------
        DataFrame indexed by code (only codes used by the data), with columns ``gene_1 … gene_<n_genes>`` (names),
        ``score_1 … score_<n_genes>`` and ``frequency`` (share of all tokens assigned to the code).
        """
        scores = self.get_pathway_gene_scores(adata, indices, batch_size)
        codes = self._global_codes(self.get_pathway_codes(adata, indices, batch_size))
        freq = np.bincount(codes.ravel(), minlength=scores.shape[0]) / max(1, codes.size)
        values = scores.to_numpy()
        if min_cells > 0:
            from scipy import sparse

            adata_ = self._validate_anndata(adata)
            x = self.get_anndata_manager(adata_, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
            if indices is not None:
                x = x[np.asarray(indices)]
            x = x[:, self.module.input_columns.cpu().numpy()]
            detected = np.asarray((x > 0).sum(0)).ravel() if sparse.issparse(x) else (np.asarray(x) > 0).sum(0)
            values = np.where(detected[None, :] >= min_cells, values, -np.inf)
        n = min(n_genes, values.shape[1])
        used = np.flatnonzero(freq > 0)
        top = np.argsort(-values[used], axis=1, kind="stable")[:, :n]
        genes = scores.columns.to_numpy()[top]
        top_scores = np.take_along_axis(values[used], top, 1)
        data = {f"gene_{i + 1}": genes[:, i] for i in range(n)}
        data.update({f"score_{i + 1}": top_scores[:, i] for i in range(n)})
        data["frequency"] = freq[used]
        return pd.DataFrame(data, index=pd.Index(used, name="code"))
