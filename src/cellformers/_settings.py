"""Package-wide settings (cache directory, seed, progress bars, verbosity)."""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path

logger = logging.getLogger("cellformers")

_CACHE_ENV = "CELLFORMERS_CACHE"


def _default_cache_dir() -> Path:
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cellformers"


class CellformersConfig:
    """Global configuration, available as :data:`cellformers.settings`.

    Attributes
    ----------
    cache_dir
        Where reference files and checkpoints are downloaded. Defaults to ``$CELLFORMERS_CACHE`` or
        ``~/.cache/cellformers``.
    seed
        Global seed, the only one to set. Every random choice that must not depend on batch size or cell order
        (masking, tie-breaking in binning, subsampling) derives its generator from this seed and the cell name;
        setting it also sets ``scvi.settings.seed``, which seeds Python's
        ``random``, NumPy and torch (Lightning's ``seed_everything``) and scvi-tools' train/validation split, so
        training (initial weights, shuffling, dropout) repeats too.
    progress_bar
        Whether long loops show a progress bar: tqdm bars over the minibatches of embedding, imputation and
        annotation and over the epochs of the cell-type classifier, and Lightning's bar during ``train`` (the
        default of its ``enable_progress_bar``). A ``progress_bar=`` argument (``tl.embed``, ``tl.impute``) or
        ``enable_progress_bar=`` overrides it for one call.
    precision
        Default numeric precision of training and inference when a call does not name one: ``"auto"`` (bf16 autocast
        where the hardware has bf16 units: CUDA with bf16, a CPU with AVX512_BF16 or AMX; float32 elsewhere), or
        ``"32"`` / ``"bf16-mixed"`` to pin it.
    inference_token_budget
        On a CPU, the most tokens (cells x the longest encoder input among them) one inference minibatch of the
        getters may hold, for models whose cells have different lengths (xTrimoGene, scFormer without zero genes):
        long cells go in small minibatches, short ones in large ones, up to ``batch_size`` cells. Small minibatches
        keep the activations in the CPU caches: embedding pbmc3k with XTrimoGene-10M was 1.8-1.9x faster at 4-16
        cells per minibatch than at 128 (docs/performance.md). ``None``: fixed minibatches of ``batch_size`` cells
        (also the behaviour on a GPU, where large minibatches are faster).
    reuse_freed_memory
        Whether training and the inference getters keep freed memory in the process for reuse (Linux with glibc;
        no effect elsewhere, nor where ``MALLOC_*_`` variables or ``GLIBC_TUNABLES`` tune malloc). glibc otherwise
        returns every block above its mmap threshold (at most 32 MiB) to the system when it is freed, and a training
        step maps and zeroes its large activations afresh: an XTrimoGene-10M training step was about 1.3x faster
        with reuse on a 2-core AMD EPYC
        (docs/performance.md, "Page faults"). The memory is handed back when the call returns; inside it the
        process keeps what it freed, so its resident memory stays near the call's peak, and a heap that
        fragmentation grew 1.25x past its size after the last trim is trimmed between steps.
    warnings_stacklevel
        Stack level used by :func:`warnings.warn` in the package.

    Examples
    --------
    >>> import tempfile
    >>> import cellformers as cf
    >>> old = cf.settings.cache_dir, cf.settings.verbosity, cf.settings.progress_bar
    >>> cf.settings.cache_dir = tempfile.mkdtemp()  # downloads go here
    >>> cf.settings.verbosity = "WARNING"  # hide the package's info messages
    >>> cf.settings.progress_bar = False
    >>> cf.settings.seed = 0
    >>> cf.settings
    CellformersConfig(cache_dir='/...', seed=0, progress_bar=False, verbosity=WARNING)
    >>> cf.settings.cache_dir, cf.settings.verbosity, cf.settings.progress_bar = old
    """

    def __init__(self) -> None:
        self._cache_dir: Path | None = None
        self._seed: int = 0
        self.progress_bar: bool = True
        self.precision: str = "auto"
        self._inference_token_budget: int | None = 8192
        self._reuse_freed_memory: bool = True
        self.warnings_stacklevel: int = 2

    @property
    def seed(self) -> int:
        """Global seed; setting it seeds scvi-tools, torch, NumPy and ``random`` as well."""
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            msg = f"`seed` must be an integer, got {seed!r}."
            raise TypeError(msg)
        import scvi

        flags = os.environ.get("XLA_FLAGS")
        scvi.settings.seed = int(seed)  # Lightning's seed_everything, and scvi-tools' data splits
        if flags is not None and "--xla_gpu_deterministic_ops=true" in flags:
            os.environ["XLA_FLAGS"] = flags  # scvi-tools appends the flag again at every call
        self._seed = int(seed)

    @property
    def inference_token_budget(self) -> int | None:
        """Most tokens per inference minibatch on a CPU (``None``: fixed minibatches of ``batch_size`` cells)."""
        return self._inference_token_budget

    @inference_token_budget.setter
    def inference_token_budget(self, budget: int | None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1):
            msg = f"`inference_token_budget` must be a positive integer (tokens per minibatch) or None, got {budget!r}."
            raise ValueError(msg)
        self._inference_token_budget = None if budget is None else int(budget)

    @property
    def reuse_freed_memory(self) -> bool:
        """Whether training and inference keep freed memory for reuse (glibc's malloc; see the class docstring)."""
        return self._reuse_freed_memory

    @reuse_freed_memory.setter
    def reuse_freed_memory(self, value: bool) -> None:
        if not isinstance(value, bool):
            msg = f"`reuse_freed_memory` must be True or False, got {value!r}."
            raise TypeError(msg)
        self._reuse_freed_memory = value

    @property
    def cache_dir(self) -> Path:
        """Directory for downloaded reference files and checkpoints."""
        return self._cache_dir if self._cache_dir is not None else _default_cache_dir()

    @cache_dir.setter
    def cache_dir(self, path: str | os.PathLike | None) -> None:
        self._cache_dir = None if path is None else Path(path).expanduser()

    @property
    def verbosity(self) -> int:
        """Logging level of the ``cellformers`` logger."""
        return logger.level

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        logger.setLevel(level)

    def __repr__(self) -> str:
        return (
            f"CellformersConfig(cache_dir={str(self.cache_dir)!r}, seed={self.seed}, "
            f"progress_bar={self.progress_bar}, verbosity={logging.getLevelName(self.verbosity)})"
        )


settings = CellformersConfig()
