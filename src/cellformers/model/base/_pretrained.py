"""``save_pretrained`` / ``from_pretrained`` on every cellformers model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._checkpoint_io import load_model, save_pretrained

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from anndata import AnnData

__all__ = ["PretrainedMixin"]


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for cellformers models.

    A checkpoint is a directory with

    - ``config.json``: the model class, its hyperparameters (``init_params_``), the ``setup_anndata`` arguments and
      scvi-tools registry (covariate categories), the genes and their token ids, the package versions and a
      training summary;
    - ``model.safetensors``: the module's parameters and buffers (no pickle);
    - ``vocab.json``: the gene vocabulary (:meth:`~cellformers.data.GeneVocab.to_json`);
    - ``checksums.json``: the sha256 of the three files above, written last.

    It is written atomically (into a temporary folder beside the target, then renamed), and loading verifies every
    file against ``checksums.json``, so a half-written or damaged checkpoint never loads. Nothing in a checkpoint is
    executed or unpickled: the model class must be one of :data:`MODEL_CLASSES` (or the class ``from_pretrained``
    is called on), and weights are read with safetensors. :func:`~cellformers.pretrained.pack_checkpoint` turns the
    directory into one archive with a sha256 for a :class:`~cellformers.pretrained.PretrainedCard`.

    Notes
    -----
    To give a local or private checkpoint a name, pack it and register a card for the archive::

        path = cf.pretrained.pack_checkpoint("xtg_pbmc/")  # also writes xtg_pbmc.tar.sha256
        card = cf.pretrained.PretrainedCard.from_archive(path, name="xtg-pbmc", license="CC-BY-4.0")
        cf.pretrained.register_pretrained(card)
        model = cf.model.XTrimoGene.from_pretrained("xtg-pbmc", adata)

    To publish one, upload the archive and build the card with ``url=`` its public address and ``sha256=`` the hash
    in ``<archive>.sha256`` (which the host should publish too, e.g. the sha256 of a Hugging Face LFS pointer).
    Without a card, ``from_pretrained(url, sha256=...)`` loads it directly.

    Examples
    --------
    Every cellformers model has these methods:

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> issubclass(cf.model.ScFormer, cf.pretrained.PretrainedMixin)
    True
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> loaded = cf.model.ScFormer.from_pretrained(path, adata)
    >>> loaded.pretrained_info_["model_class"], loaded.pretrained_info_["training_summary"]["n_epochs"]
    ('cellformers.model.ScFormer', 1)
    >>> np.allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    True
    """

    #: Where the model was loaded from (set by :meth:`from_pretrained`; ``None`` otherwise).
    pretrained_info_: dict | None = None

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model as a checkpoint directory (``config.json``, ``model.safetensors``, ``vocab.json``).

        Everything is written into a temporary folder beside ``path`` and renamed into place at the end, so an
        interrupted save leaves no checkpoint at ``path`` (and, with ``overwrite=True``, the previous one intact).
        ``checksums.json`` lists the sha256 of each file (also logged); :func:`~cellformers.pretrained.pack_checkpoint`
        makes the single archive a registry card points at. See :func:`~cellformers.pretrained.save_pretrained`.

        Parameters
        ----------
        path
            Directory to create.
        overwrite
            Replace an existing checkpoint at ``path``. A directory that is not a cellformers checkpoint is never
            replaced.

        Returns
        -------
        ``path``.

        Examples
        --------
        >>> model.save_pretrained("xtg_pbmc/")  # doctest: +SKIP
        >>> model = cf.model.XTrimoGene.from_pretrained("xtg_pbmc/", adata)  # doctest: +SKIP
        """
        return save_pretrained(self, path, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path_or_url: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        sha256: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        min_gene_coverage: float = 0.5,
        setup_kwargs: dict | None = None,
    ):
        """Load a checkpoint written by :meth:`save_pretrained`: registered name, directory, archive or URL.

        Sources, in this order: a name in :func:`~cellformers.pretrained.list_pretrained` (downloaded once into
        ``settings.cache_dir`` and checked against the card's sha256); an existing directory or archive; an
        ``https``/``http``/``ftp``/``file`` URL of an archive, which requires ``sha256``. Every file is checked
        against the checkpoint's ``checksums.json``. The model class must be one of cellformers' models (looked up
        by name, never imported from the checkpoint) or ``cls`` itself; weights are read with safetensors, with
        strict key and shape checks.

        **With** ``adata``: the data are set up by replaying the checkpoint's ``setup_anndata`` arguments against
        its saved registry (as scvi-tools' ``load`` does), so batch and label categories keep their encoding; the
        checkpoint's ``batch_key``/``labels_key`` columns must exist and hold known categories (otherwise an error
        says what to add; ``setup_kwargs`` renames a column or the layer). When the genes or their token ids differ
        from the checkpoint's, the model is attached to an aligned copy (:func:`cellformers.pp.align_to_reference`:
        same cells, the checkpoint's genes in its order, missing ones zero-filled), available as ``model.adata``;
        ``adata`` itself is then left untouched, ``pretrained_info_['aligned_copy']`` is ``True`` and a message
        says so. :func:`cellformers.tl.embed` and :func:`cellformers.tl.impute` take ``adata`` itself and align it
        the same way (``cf.tl.embed(adata, model)`` writes into ``adata.obsm``); the model's own getters need
        ``model.adata`` or an aligned AnnData. When they match, ``adata`` is set up in place, as by
        ``setup_anndata``.

        **Without** ``adata``: the module is built from the checkpoint alone (on a two-cell placeholder that is
        discarded) and the model is returned in scvi-tools' "loaded without AnnData" state: ``model.adata`` is
        ``None`` and getters need an ``adata`` argument, which is set up from the saved registry on first use. Its
        genes must then be the checkpoint's (``adata = cf.pp.align_to_reference(adata, model.get_var_names())``).

        Parameters
        ----------
        name_or_path_or_url
            Registered name, checkpoint directory, archive path, or archive URL.
        adata
            Data to attach (raw counts), or ``None``.
        sha256
            sha256 of the archive; required for URLs, optional for archive paths.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ``"mps"``).
        device
            Device index, or ``"auto"`` for the first one of ``accelerator``.
        min_gene_coverage
            Smallest fraction of the checkpoint's genes ``adata`` must contain when its genes differ
            (:class:`~cellformers.GeneMappingError` below it).
        setup_kwargs
            Overrides of the saved ``setup_anndata`` arguments, e.g. ``{"layer": None}`` when the counts are in
            ``adata.X`` or ``{"batch_key": "donor"}``.

        Returns
        -------
        The model, in eval mode, with ``is_trained_`` from the checkpoint and ``pretrained_info_`` (name, source,
        sha256, versions, training summary).

        Examples
        --------
        >>> model = cf.model.XTrimoGene.from_pretrained("xtg_pbmc/", adata)  # doctest: +SKIP
        >>> adata.obsm["X_xtrimogene"] = model.get_latent_representation()  # doctest: +SKIP
        """
        return load_model(
            cls,
            name_or_path_or_url,
            adata,
            sha256=sha256,
            accelerator=accelerator,
            device=device,
            min_gene_coverage=min_gene_coverage,
            setup_kwargs=setup_kwargs,
        )
