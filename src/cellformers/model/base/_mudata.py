"""``setup_mudata``: register the RNA modality of a MuData (scvi-tools' ``modalities`` argument)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellformers._exceptions import MissingKeyError

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


class MuDataMixin:
    """Set up a model on the RNA modality of a :class:`~mudata.MuData`."""

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        rna_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ) -> AnnData:
        """Register the RNA modality of a MuData, as scvi-tools' ``setup_mudata`` names it.

        cellformers models read one modality, scRNA-seq counts: ``modalities={"rna_layer": "rna"}`` (the default)
        names it, as in scvi-tools' ``TOTALVI.setup_mudata``. That modality (an :class:`~anndata.AnnData` inside
        ``mdata``, not a copy) is set up with :meth:`setup_anndata`; build the model on it, and everything the
        ``tl`` functions compute from a MuData is written into it::

            Model.setup_mudata(mdata, batch_key="batch")
            model = Model(mdata["rna"])
            cf.tl.embed(mdata, model)  # -> mdata["rna"].obsm["X_<model>"]

        The RNA modality is registered with scvi-tools' ``AnnDataManager``, not with a ``MuDataManager`` over the
        whole object: the models take one modality, and their getters accept the MuData (they read its RNA
        modality) as well as the modality itself. ``batch_key`` and ``labels_key`` are columns of the modality's
        ``obs`` (``mdata["rna"].obs``), not of the MuData's global ``obs``.

        Parameters
        ----------
        mdata
            MuData with an RNA modality of raw counts.
        rna_layer
            Layer of the RNA modality holding raw counts; ``None`` uses its ``X``.
        batch_key
            Column of the RNA modality's ``obs`` with the batch of each cell.
        labels_key
            Column of the RNA modality's ``obs`` with cell labels.
        modalities
            ``{"rna_layer": <name of the RNA modality>}``; ``None`` means ``{"rna_layer": "rna"}``.
        **kwargs
            Other arguments of the model's :meth:`setup_anndata`.

        Returns
        -------
        The RNA modality that was set up (the one to build the model on).

        Examples
        --------
        >>> import mudata
        >>> import cellformers as cf
        >>> mdata = mudata.MuData({"rna": cf.data.synthetic_counts(n_cells=60, n_genes=30)})
        >>> rna = cf.model.ScFormer.setup_mudata(mdata, batch_key="batch")
        >>> rna is mdata["rna"]
        True
        >>> model = cf.model.ScFormer(rna, preset="tiny")
        """
        from mudata import MuData

        if not isinstance(mdata, MuData):
            msg = f"`mdata` must be a MuData, got {type(mdata).__name__}; for an AnnData use `{cls.__name__}.setup_anndata`."
            raise TypeError(msg)
        modalities = {"rna_layer": "rna"} if modalities is None else dict(modalities)
        unknown = sorted(set(modalities) - {"rna_layer"})
        if unknown:
            msg = (
                f"`modalities` has keys {unknown} that {cls.__name__} does not read; it reads one modality, "
                "`modalities={'rna_layer': <RNA modality>}`."
            )
            raise ValueError(msg)
        name = modalities.get("rna_layer", "rna")
        if name not in mdata.mod:
            msg = (
                f"The MuData has no modality {name!r} (it has {sorted(mdata.mod)}); name the RNA one with "
                "`modalities={'rna_layer': '<name>'}`."
            )
            raise MissingKeyError(msg)
        rna = mdata.mod[name]
        cls.setup_anndata(rna, layer=rna_layer, batch_key=batch_key, labels_key=labels_key, **kwargs)
        return rna
