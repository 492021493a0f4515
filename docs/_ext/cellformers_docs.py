"""Sphinx extension for the cellformers docs.

It makes the site follow the package without anyone editing the docs by hand:

1. **API pages from ``__all__``.** Before Sphinx looks for source files (``config-inited``), it writes one page per
   public subpackage to ``docs/api/generated/`` with ``autosummary`` tables of everything in that subpackage's
   ``__all__`` (classes, functions, exceptions, constants). ``docs/api.md`` links to these pages. A name exported in
   more than one place is documented once, at its first place in :data:`SECTIONS`. Class pages list the members
   chosen by :func:`class_members` (nothing inherited from torch or Lightning).
2. **Public names for private paths.** Type hints point at where an object is defined
   (``cellformers.data._vocab.GeneVocab``); the docs document it where users import it from
   (``cellformers.data.GeneVocab``). Unresolved references to a private path, or to a second export of the same
   object, are resolved to the documented name. Unqualified third-party names (``Tensor``, ``AnnData``, imported
   under ``TYPE_CHECKING``) are linked through intersphinx to their qualified name.
3. **Strict for our own objects, lenient for others.** ``nitpicky`` is on: a reference to a ``cellformers`` object
   that does not exist fails the build. A reference to another project that cannot be resolved (offline build, no
   intersphinx inventory, or an object missing from that project's inventory) is rendered as plain text, and so is
   one to an existing private object (private objects are not documented).
4. **Returns sections as written.** See :func:`returns_as_field`.
5. **Tutorials.** Notebooks in the repository's ``tutorials/`` are copied to ``docs/tutorials/notebooks/`` and
   listed on ``docs/tutorials/index.md`` (they are stored executed; nothing is run at build time).
6. **Every warning, every time.** Each build starts from a fresh environment: Sphinx only reports the warnings of
   the pages it reads again, so an incremental second ``make docs`` would pass where the first failed.
   ``CELLFORMERS_DOCS_INCREMENTAL=1`` keeps Sphinx's incremental builds while writing docs.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import logging
import os
import pkgutil
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sphinx.util import logging as sphinx_logging

if TYPE_CHECKING:
    import types
    from docutils import nodes
    from sphinx.application import Sphinx
    from sphinx.config import Config
    from sphinx.domains import Domain
    from sphinx.environment import BuildEnvironment

logger = sphinx_logging.getLogger(__name__)

PACKAGE = "cellformers"
API_DIR = Path("api") / "generated"
TUTORIALS_SRC = Path("..") / "tutorials"
TUTORIALS_DIR = Path("tutorials") / "notebooks"
TUTORIALS_MARKER = "<!-- tutorials: generated list -->"

#: (subpackage, page title) in the order of the API reference. ``""`` is the top level (settings, exceptions).
#: A public subpackage missing here still gets a page (after these, titled with its name); list it in docs/api.md.
SECTIONS: list[tuple[str, str]] = [
    ("pp", "Preprocessing: `pp`"),
    ("tl", "Tools: `tl`"),
    ("pl", "Plotting: `pl`"),
    ("metrics", "Metrics: `metrics`"),
    ("downstream", "Downstream models: `downstream`"),
    ("model", "Models: `model`"),
    ("data", "Data: `data`"),
    ("pretrained", "Pretrained checkpoints: `pretrained`"),
    ("checkpoint", "Checkpoint format: `checkpoint`"),
    ("module", "Modules: `module`"),
    ("nn", "Neural-network blocks: `nn`"),
    ("train", "Training plans: `train`"),
    ("", "Settings and exceptions"),
]


# ---------------------------------------------------------------------------------------------------------------
# 1. API pages
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One documented object on an API page."""

    module: str  # ``currentmodule`` of its autosummary table, e.g. ``cellformers.nn``
    name: str  # as listed in the autosummary table, e.g. ``TransformerEncoder``
    kind: str  # "class", "exception", "function"

    @property
    def canonical(self) -> str:
        """Full documented name, e.g. ``cellformers.nn.TransformerEncoder``."""
        return f"{self.module}.{self.name}"


@dataclass
class _Data:
    """A public constant or instance, documented with a ``data`` directive."""

    name: str
    type: str  # annotation as written in the source, or the class's documented name
    doc: str


@dataclass
class _Page:
    docname: str  # e.g. ``api/generated/nn``
    module: str  # e.g. ``cellformers.nn``
    title: str
    description: str
    entries: list[_Entry] = field(default_factory=list)
    data: list[_Data] = field(default_factory=list)


@dataclass
class _ApiIndex:
    pages: list[_Page] = field(default_factory=list)
    #: private or secondary path -> documented path
    aliases: dict[str, str] = field(default_factory=dict)


_API = _ApiIndex()


def _public_subpackages(pkg: types.ModuleType) -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules(pkg.__path__) if info.ispkg and not info.name.startswith("_")
    )


def _kind(obj: Any) -> str | None:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return "function"
    if inspect.ismodule(obj):
        return None
    return "data"


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    text = inspect.cleandoc(doc).split("\n\n", 1)[0].strip()
    # Placeholder docstrings of empty subpackages ("pp.") say nothing.
    return "" if len(text.rstrip(".").split()) <= 1 else text


def _defined_path(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname:
        return None
    return f"{module}.{qualname}"


def _describe_data(modname: str, name: str, obj: Any) -> _Data:
    """Type and docstring of a public constant, read from the module that assigns it.

    The docstring is a ``#:`` comment above the assignment or a string literal below it, as autodoc reads them.
    """
    from sphinx.pycode import ModuleAnalyzer

    # The module that assigns it first, the package that re-exports it last; a name re-exported from another
    # package (``cellformers.pretrained.REGISTRY`` from ``cellformers.checkpoint``) is looked up there too.
    own = sorted(m for m in sys.modules if m.startswith(f"{modname}."))
    other = sorted(m for m in sys.modules if m.startswith(f"{PACKAGE}.") and m not in own and m != modname)
    candidates = own + other + [modname]
    for candidate in candidates:
        mod = sys.modules.get(candidate)
        if mod is None or getattr(mod, name, None) is not obj:
            continue
        annotation = getattr(mod, "__annotations__", {}).get(name)
        try:
            attr_docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # noqa: BLE001 - no source available: fall back to the class name
            attr_docs = {}
        doc = "\n".join(attr_docs.get(("", name), [])).strip()
        if candidate != modname and not doc and annotation is None:
            continue
        if annotation is None:
            cls = type(obj)
            annotation = _defined_path(cls) if cls.__module__.startswith(PACKAGE) else cls.__qualname__
        own_class = type(obj).__module__.startswith(PACKAGE)
        if not doc and own_class:
            doc = f"An instance of :class:`~{_defined_path(type(obj))}`."
        elif not doc:
            path = getattr(mod, "__file__", candidate)
            logger.warning(
                "%s.%s is public but has no docstring: add a `#:` comment above its assignment in %s",
                modname,
                name,
                path,
                type="cellformers",
                subtype="undocumented_data",
            )
        return _Data(name, str(annotation), doc)
    return _Data(name, type(obj).__qualname__, "")


def build_api_index() -> _ApiIndex:
    """Import the package and collect every public object, page by page."""
    pkg = importlib.import_module(PACKAGE)
    index = _ApiIndex()
    seen: dict[int, str] = {}  # id(obj) -> canonical name
    order = [name for name, _ in SECTIONS]
    titles = dict(SECTIONS)
    for sub in _public_subpackages(pkg):
        if sub not in titles:
            order.insert(len(order) - 1, sub)
            titles[sub] = f"`{sub}`"
    for sub in order:
        modname = f"{PACKAGE}.{sub}" if sub else PACKAGE
        mod = importlib.import_module(modname)
        page = _Page(
            docname=str(API_DIR / (sub or "settings")).replace("\\", "/"),
            module=modname,
            title=titles[sub],
            description=_first_paragraph(mod.__doc__) if sub else "",
        )
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            kind = _kind(obj)
            if kind is None:
                continue
            public = f"{modname}.{name}"
            if kind == "data":
                if id(obj) in seen:
                    index.aliases[public] = seen[id(obj)]
                    continue
                seen[id(obj)] = public
                page.data.append(_describe_data(modname, name, obj))
                # Instances of our own classes (``cellformers.settings``) also get their class documented.
                cls = type(obj)
                cls_path = _defined_path(cls)
                if cls.__module__.startswith(PACKAGE) and id(cls) not in seen and cls_path:
                    seen[id(cls)] = cls_path
                    page.entries.append(_Entry(cls.__module__, cls.__qualname__, "class"))
                continue
            if id(obj) in seen:
                index.aliases[public] = seen[id(obj)]
                continue
            seen[id(obj)] = public
            page.entries.append(_Entry(modname, name, kind))
            defined = _defined_path(obj)
            if defined and defined != public:
                index.aliases[defined] = public
        index.pages.append(page)
    return index


_EXTERNAL_MODULES = ("builtins", "abc", "typing", "torch", "lightning", "pytorch_lightning")
#: Members a model inherits from scvi-tools' ``BaseModelClass`` that its page shows: those a cellformers user calls.
#: The others do not apply to these models (``differential_abundance``, ``get_normalized_expression``, the MLflow
#: ``run_id``/``run_name``) or are registry plumbing, and are left out of the page (they still work).
SCVI_MODEL_MEMBERS_SHOWN = frozenset(
    {
        "adata",
        "adata_manager",
        "device",
        "get_anndata_manager",
        "get_var_names",
        "history",
        "is_trained",
        "test_indices",
        "to_device",
        "train_indices",
        "validation_indices",
        "view_anndata_setup",
        "view_setup_args",
    }
)


def _is_external(klass: type) -> bool:
    module = klass.__module__ or ""
    return any(module == m or module.startswith(f"{m}.") for m in _EXTERNAL_MODULES)


def _hidden_scvi_member(klass: type, name: str) -> bool:
    """Whether ``name``, defined on scvi-tools' model base classes, stays off a cellformers model's page."""
    return (klass.__module__ or "").startswith("scvi.model") and name not in SCVI_MODEL_MEMBERS_SHOWN


def _docstring_attributes(cls: type) -> set[str]:
    """Names listed in the ``Attributes`` section of a numpydoc class docstring (napoleon documents those)."""
    doc = inspect.cleandoc(cls.__doc__ or "").splitlines()
    for i in range(len(doc) - 1):
        if doc[i].strip() == "Attributes" and set(doc[i + 1].strip()) == {"-"}:
            break
    else:
        return set()
    section = doc[i + 2 :]
    names: set[str] = set()
    for j, item in enumerate(section):
        if not item or item[0].isspace():
            continue
        if j + 1 < len(section) and section[j + 1].strip() and set(section[j + 1].strip()) == {"-"}:
            break  # the heading of the next section
        names.add(item.split(":")[0].strip())
    return names


def class_members(cls: type) -> dict[str, list[str]]:
    """Public attributes and methods of ``cls`` for its API page.

    Members inherited from torch, Lightning or Python itself are left out; of the members a model inherits from
    scvi-tools' model base classes only those users call on our models stay (:data:`SCVI_MODEL_MEMBERS_SHOWN`:
    ``adata``, ``history``, ``get_var_names``, ...; ``train``, ``save`` and ``load`` are cellformers' own). ``table`` lists attributes for the summary
    table; ``attributes`` those to document with ``autoattribute`` (not the ones napoleon already documents from the
    docstring's ``Attributes`` section).
    """
    in_docstring = _docstring_attributes(cls)
    attributes: list[str] = []
    methods: list[str] = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or _is_external(owner) or _hidden_scvi_member(owner, name):
            continue
        raw = vars(owner)[name]
        if isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw) or inspect.ismethoddescriptor(raw):
            methods.append(name)
        elif not inspect.isclass(raw):
            attributes.append(name)
    return {
        "table": attributes,
        "attributes": [a for a in attributes if a not in in_docstring],
        "methods": methods,
    }


def _settings_attributes() -> list[tuple[str, str]]:
    """``(name, description)`` of each entry of the ``Attributes`` section of ``cellformers.settings``' class."""
    from cellformers._settings import CellformersConfig

    doc = inspect.cleandoc(CellformersConfig.__doc__ or "").splitlines()
    start = next(
        (i + 2 for i in range(len(doc) - 1) if doc[i].strip() == "Attributes" and doc[i + 1].startswith("-")), None
    )
    if start is None:
        return []
    items: list[tuple[str, list[str]]] = []
    for line in doc[start:]:
        if line and not line[0].isspace():
            if line.startswith("-"):  # the underline of the next section
                items.pop()
                break
            items.append((line.split(":")[0].strip(), []))
        elif items:
            items[-1][1].append(line.strip())
    return [(name, " ".join(t for t in text if t)) for name, text in items]


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _autosummary(names: list[str]) -> str:
    lines = [".. autosummary::", "   :toctree: .", "   :nosignatures:", ""]
    lines += [f"   {n}" for n in names]
    return "\n".join(lines) + "\n"


def _render_page(page: _Page) -> str:
    title = page.title.replace("`", "``")
    out = [
        ".. This file is generated by docs/_ext/cellformers_docs.py from the package's __all__. Do not edit.\n",
        _heading(title, "="),
        f".. module:: {page.module}\n" if page.module != PACKAGE else "",
        f".. currentmodule:: {page.module}\n",
    ]
    if page.description:
        out.append(page.description + "\n")
    if page.module != PACKAGE:
        out.append(f"Import as ``import cellformers as cf`` and use ``cf.{page.module.split('.', 1)[1]}.<name>``.\n")
    if not page.entries and not page.data:
        out.append("Nothing is public here yet.\n")
    if page.data:
        out.append(_heading("Constants and instances", "-"))
    for data in page.data:
        body = textwrap.indent(data.doc or "No description.", "   ")
        out.append(f".. data:: {data.name}\n   :type: {data.type}\n\n{body}\n")
        if page.module == PACKAGE and data.name == "settings":
            for attr, text in _settings_attributes():  # targets of :attr:`cellformers.settings.seed` and the like
                out.append(f".. attribute:: settings.{attr}\n\n{textwrap.indent(text, '   ')}\n")
    groups = [("Classes", "class"), ("Functions", "function"), ("Exceptions", "exception")]
    for heading, kind in groups:
        entries = [e for e in page.entries if e.kind == kind]
        if not entries:
            continue
        out.append(_heading(heading, "-"))
        for module in dict.fromkeys(e.module for e in entries):
            if module != page.module:
                out.append(f".. currentmodule:: {module}\n")
            out.append(_autosummary([e.name for e in entries if e.module == module]))
            if module != page.module:
                out.append(f".. currentmodule:: {page.module}\n")
    return "\n".join(out)


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def generate_api_pages(srcdir: Path) -> _ApiIndex:
    """Write ``docs/api/generated/<sub>.rst`` and drop pages and stubs of objects that are no longer public."""
    index = build_api_index()
    outdir = srcdir / API_DIR
    outdir.mkdir(parents=True, exist_ok=True)
    keep: set[str] = set()
    for page in index.pages:
        path = srcdir / f"{page.docname}.rst"
        _write_if_changed(path, _render_page(page))
        keep.add(path.name)
        keep.update(f"{entry.canonical}.rst" for entry in page.entries)
    for path in outdir.glob("*.rst"):
        if path.name not in keep:
            path.unlink()
    return index


# ---------------------------------------------------------------------------------------------------------------
# 2. and 3. reference resolution
# ---------------------------------------------------------------------------------------------------------------


def _strip(target: str) -> str:
    return target.lstrip("~.")


def _alias_of(target: str, aliases: dict[str, str]) -> str | None:
    """The documented name of ``target``, following aliases of the object or of its class."""
    if target in aliases:
        return aliases[target]
    head = target.rpartition(".")[0]
    while head:
        if head in aliases:
            return f"{aliases[head]}.{target[len(head) + 1 :]}"
        head = head.rpartition(".")[0]
    return None


def _resolve_alias(
    app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = _strip(node["reftarget"])
    new = _alias_of(target, _API.aliases)
    if new is None:
        return None
    domain = env.get_domain("py")
    for reftype in (node["reftype"], "obj"):
        ref = domain.resolve_xref(env, node["refdoc"], app.builder, reftype, new, node, contnode)
        if ref is not None:
            return ref
    return None


_BUILTIN_NAMES = frozenset(dir(builtins)) | {"None", "True", "False", "Ellipsis"}


def _private_object_exists(target: str, *, private_only: bool = True) -> bool:
    """Whether ``target`` names an existing object on a private path (``cellformers._utils.counter_uniform``)."""
    parts = target.split(".")
    if private_only and not any(p.startswith("_") for p in parts[1:]):
        return False
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _is_internal(node: nodes.Element) -> bool:
    """Whether an unresolved reference points at a cellformers object (and so must resolve).

    Private objects are not documented: a reference to one that exists is shown as code, not as a link.
    """
    target = _strip(node.get("reftarget", ""))
    if target == PACKAGE or target.startswith(f"{PACKAGE}."):
        return not _private_object_exists(target)
    if "." in target or not target or target in _BUILTIN_NAMES:
        return False
    # An unqualified name written in a cellformers docstring (``:class:`GeneVocab```) that resolves nowhere,
    # unless it exists, unexported, in the module of that docstring (``:data:`METRICS``` in ``tl/_benchmark.py``).
    if not (str(node.get("py:module") or "").startswith(PACKAGE) and target[:1].isupper() and target.isidentifier()):
        return False
    owner = _docstring_owner(node)
    return owner is None or not _private_object_exists(f"{owner}.{target}", private_only=False)


def _docstring_owner(node: nodes.Element) -> str | None:
    """The module whose docstring holds ``node`` (from autodoc's ``<file>:docstring of <object>`` source)."""
    source = str(node.source or "")
    marker = "docstring of "
    if marker not in source:
        return None
    parts = source.split(marker, 1)[1].strip().split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in sys.modules:
            return name
    return None


def _warn_missing_reference(app: Sphinx, domain: Domain | None, node: nodes.Element) -> bool | None:
    if domain is None or domain.name != "py":
        return None
    if not _is_internal(node) or _qualify_bare(_strip(node.get("reftarget", ""))):
        return True
    if node.source:  # Sphinx's own warning names the docstring
        return None
    # References made by autodoc-typehints or napoleon carry no source: name the page at least.
    logger.warning(
        "py:%s reference target not found: %s (in a docstring or signature on page %s)",
        node.get("reftype"),
        node.get("reftarget"),
        node.get("refdoc"),
        location=(node.get("refdoc"), node.line),
        type="ref",
        subtype=node.get("reftype"),
    )
    return True


# Names that signatures and docstrings use unqualified, because the module imports them under TYPE_CHECKING or
# at module level (``Tensor``, ``AnnData``, ``Path``): looked up in these modules, in order.
_BARE_NAME_MODULES = (
    "builtins",
    "typing",
    "collections.abc",
    "pathlib",
    "os",
    "numpy",
    "pandas",
    "scipy.sparse",
    "anndata",
    "mudata",
    "torch",
    "torch.nn",
    "lightning.pytorch",
    "scvi.model.base",
    "scvi.module.base",
    "scvi.train",
    "scvi.data",
    "scvi",
    "matplotlib.axes",
    "matplotlib.figure",
)


def _qualify_bare(target: str) -> str | None:
    """``Tensor`` -> ``torch.Tensor``: the public name of an unqualified third-party name, if one is found."""
    if not target.isidentifier():
        return None
    for modname in _BARE_NAME_MODULES:
        mod = sys.modules.get(modname)
        if mod is None:
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                continue
        obj = getattr(mod, target, None)
        if obj is not None and (inspect.isclass(obj) or inspect.isfunction(obj) or hasattr(obj, "__origin__")):
            return target if modname == "builtins" else f"{modname}.{target}"
    return None


def _resolve_bare_external(
    app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    """Link ``Tensor`` (a TYPE_CHECKING import written unqualified in a cellformers docstring) to ``torch.Tensor``."""
    if node.get("refdomain") != "py" or "intersphinx" not in app.extensions:
        return None
    target = _strip(node["reftarget"])
    if "." in target or not str(node.get("py:module") or "").startswith(PACKAGE):
        return None
    qualified = _qualify_bare(target)
    if qualified is None or qualified == target:
        return None
    from sphinx.ext.intersphinx import missing_reference

    new = node.deepcopy()
    new["reftarget"] = qualified
    return missing_reference(app, env, new, contnode)


# ---------------------------------------------------------------------------------------------------------------
# 4. Returns sections
# ---------------------------------------------------------------------------------------------------------------


def _is_section_header(lines: list[str], i: int) -> bool:
    return (
        i + 1 < len(lines)
        and bool(lines[i].strip())
        and not lines[i][:1].isspace()
        and len(set(lines[i + 1].strip())) == 1
        and lines[i + 1].strip()[:1] in "-=~"
        and len(lines[i + 1].strip()) >= 3
    )


def returns_as_field(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Keep a numpydoc ``Returns`` section as written when napoleon reads it.

    cellformers docstrings put types only in the signature, so ``Returns`` holds prose (``Path of the verified
    file.``) or scanpy's list of written fields (`` `adata.obsm['X_xtrimogene' | key_added]` : ...``). Napoleon
    would take the first line for the return type. Written as a nameless, typeless field (``:`` then the section
    indented), napoleon turns the whole section into the ``:returns:`` body: paragraphs, and a definition list for
    ``name : type`` items. sphinx-autodoc-typehints adds the type from the signature as ``:rtype:``.
    sphinx-autodoc-typehints inserts a bare ``:`` line for the same purpose but leaves the prose unindented, which
    napoleon then reads as the type; this runs after it (same priority, connected later) and replaces that line.
    """
    if what not in {"function", "method", "property"}:
        return
    for i in range(len(lines) - 1):
        if lines[i].strip() == "Returns" and _is_section_header(lines, i):
            break
    else:
        return
    end = i + 2
    while end < len(lines) and not _is_section_header(lines, end):
        end += 1
    body = lines[i + 2 : end]
    if body and body[0].strip() == ":":
        body = body[1:]
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    if not body:
        return
    lines[i + 2 : end] = [":", *[f"    {line}" if line.strip() else "" for line in body], ""]


# ---------------------------------------------------------------------------------------------------------------
# 5. tutorials
# ---------------------------------------------------------------------------------------------------------------


def copy_tutorials(srcdir: Path) -> list[str]:
    """Copy ``tutorials/*.ipynb`` next to the docs; return their docnames relative to ``tutorials/``."""
    source = (srcdir / TUTORIALS_SRC).resolve()
    target = srcdir / TUTORIALS_DIR
    notebooks = sorted(source.glob("*.ipynb")) if source.is_dir() else []
    target.mkdir(parents=True, exist_ok=True)
    names = set()
    for nb in notebooks:
        dest = target / nb.name
        if not dest.exists() or dest.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, dest)
        names.add(nb.name)
    for stale in target.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    return [f"notebooks/{Path(n).stem}" for n in sorted(names)]


def _tutorials_source(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname != "tutorials/index" or TUTORIALS_MARKER not in source[0]:
        return
    entries = app.config.cellformers_tutorials
    if entries:
        block = "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(entries) + "\n```\n"
    else:
        block = "No tutorial notebooks are published yet.\n"
    source[0] = source[0].replace(TUTORIALS_MARKER, block)


# ---------------------------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------------------------


class _SoftenIntersphinxFailures(logging.Filter):
    """An unreachable inventory (network trouble) is reported, but does not fail a ``-W`` build."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "failed to reach any of the inventories" in str(record.msg):
            record.levelno = logging.INFO
            record.levelname = "INFO"
            record.msg = "intersphinx (links to that project stay plain text): " + str(record.msg)
        return True


def _config_inited(app: Sphinx, config: Config) -> None:
    if os.environ.get("CELLFORMERS_DOCS_INCREMENTAL", "") not in {"1", "true", "yes"}:
        # Sphinx only reports the warnings of the pages it reads again. Starting from a fresh environment makes
        # every `make docs` report every warning, so a second run cannot pass where the first one failed.
        (Path(app.doctreedir) / "environment.pickle").unlink(missing_ok=True)
    srcdir = Path(app.srcdir)
    index = generate_api_pages(srcdir)
    _API.pages, _API.aliases = index.pages, index.aliases
    config.cellformers_tutorials = copy_tutorials(srcdir)
    members = {}
    for page in index.pages:
        for entry in page.entries:
            if entry.kind in {"class", "exception"}:
                obj = getattr(importlib.import_module(entry.module), entry.name)
                members[entry.canonical] = class_members(obj)
    config.autosummary_context = {**config.autosummary_context, "class_members": members}


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the handlers."""
    app.add_config_value("cellformers_tutorials", [], "env")
    app.connect("config-inited", _config_inited)
    app.connect("missing-reference", _resolve_alias, priority=400)
    app.connect("missing-reference", _resolve_bare_external, priority=600)
    # After sphinx-autodoc-typehints' own Returns fix (499, connected earlier), before napoleon (500).
    app.connect("autodoc-process-docstring", returns_as_field, priority=499)
    app.connect("warn-missing-reference", _warn_missing_reference)
    app.connect("source-read", _tutorials_source)
    # The tutorial list depends on files outside the docs: re-read its page on every build.
    app.connect("env-get-outdated", lambda app, env, added, changed, removed: ["tutorials/index"])
    logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_SoftenIntersphinxFailures())
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["setup", "build_api_index", "generate_api_pages", "copy_tutorials", "SECTIONS"]
