"""Which model classes a checkpoint may name.

A checkpoint's ``config.json`` names its model class, and loading builds that class: a hostile checkpoint could name
any importable callable. So nothing is imported from the name. The package's models register themselves here
(:func:`register_model_class`, applied where each model class is defined), and a name resolves only to a
registered class or to exactly the class ``from_pretrained`` was called on.
"""

from __future__ import annotations

from typing import Any

from cellformers._exceptions import UntrustedCheckpointError

from ._format import CheckpointError

__all__ = [
    "MODEL_CLASSES",
    "class_name_for",
    "qualified_name",
    "register_model_class",
    "resolve_model_class",
    "trusted_model_class",
]

#: The package's model classes a checkpoint may name (``"cellformers.model.<name>"``).
MODEL_CLASSES = ("XTrimoGene", "ScFormer", "ScPaLM")
_MODEL_PREFIX = "cellformers.model."
_REGISTERED: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Trust ``cls`` as the model class ``cellformers.model.<cls.__name__>`` of checkpoints (a class decorator)."""
    if cls.__name__ not in MODEL_CLASSES:
        msg = f"{cls.__name__} is not one of the package's checkpoint model classes {MODEL_CLASSES}."
        raise ValueError(msg)
    _REGISTERED[cls.__name__] = cls
    return cls


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_model_class(name: Any) -> type | None:
    """The package's model class called ``name`` (``"cellformers.model.XTrimoGene"``), or None."""
    if not isinstance(name, str) or not name.startswith(_MODEL_PREFIX):
        return None
    return _REGISTERED.get(name[len(_MODEL_PREFIX) :])


def class_name_for(cls: type) -> str:
    """Name written to ``config.json``: ``cellformers.model.<Name>`` for the package's models."""
    if trusted_model_class(_MODEL_PREFIX + cls.__name__) is cls:
        return _MODEL_PREFIX + cls.__name__
    return qualified_name(cls)


def resolve_model_class(name: Any, cls: type | None) -> type:
    """The class to build: one of the package's models, or ``cls`` itself when the checkpoint names exactly it.

    Nothing is imported from the name: either it is a registered class of :data:`MODEL_CLASSES`, or it equals the qualified name of the class the caller chose.
    """
    trusted = trusted_model_class(name)
    if trusted is None and cls is not None and name == qualified_name(cls):
        trusted = cls
    if trusted is None:
        allowed = ", ".join(_MODEL_PREFIX + n for n in MODEL_CLASSES)
        msg = (
            f"The checkpoint names the model class {name!r}, which is not one of cellformers' models ({allowed}); "
            "it is refused, because loading it would run code the checkpoint chooses. If it is your own subclass "
            "and you trust the checkpoint, call `from_pretrained` on that class."
        )
        raise UntrustedCheckpointError(msg)
    if cls is None or issubclass(trusted, cls):
        return trusted
    if issubclass(cls, trusted):
        return cls
    msg = (
        f"The checkpoint holds a {name} model, not a {cls.__name__}; load it with "
        f"`{trusted.__name__}.from_pretrained(...)` or `cellformers.pretrained.load_pretrained(...)`."
    )
    raise CheckpointError(msg)
