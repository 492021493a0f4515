"""Sphinx configuration for the cellformers documentation.

Build it the way ``make docs`` and Read the Docs do::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Cross-references to other projects (intersphinx) need the internet. They are switched on on Read the Docs and
whenever the inventories can be reached, and off otherwise, so that an offline build still passes with ``-W``.
Force a mode with ``CELLFORMERS_DOCS_OFFLINE=1`` (never fetch) or ``CELLFORMERS_DOCS_OFFLINE=0`` (always fetch).
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))
# Document the working tree even when an older copy of the package is installed.
sys.path.insert(0, str(ROOT / "src"))

# -- Project information -----------------------------------------------------------------------------------------

try:
    _info = metadata("cellformers")
    project = _info["Name"]
    release = _info["Version"]
except PackageNotFoundError:  # building from a source tree that is not installed
    project = "cellformers"
    release = "0.0.0"
author = "The cellformers developers"
copyright = f"{datetime.now():%Y}, {author}"
version = release
repository_url = "https://github.com/cellformers/cellformers"

# -- General configuration ---------------------------------------------------------------------------------------

needs_sphinx = "7.2"
extensions = [
    "myst_nb",
    "sphinx_copybutton",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinxcontrib.bibtex",
    "sphinx_autodoc_typehints",  # after napoleon: it fills the types of napoleon's `:param:` fields
    "sphinx.ext.mathjax",
    "cellformers_docs",  # docs/_ext: API pages from `__all__`, tutorials, reference resolution
    "cellformers_tables",  # docs/_ext: benchmark and preset tables generated at build time
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
pygments_style = "default"

# Every reference to a cellformers object must resolve (nitpicky). References to other projects that cannot be
# resolved (offline build, object missing from that project's inventory) are left as plain text instead of failing
# the build; see docs/_ext/cellformers_docs.py.
nitpicky = True
nitpick_ignore: list[tuple[str, str]] = []
suppress_warnings: list[str] = []

# -- autodoc / autosummary / napoleon / typehints ----------------------------------------------------------------

autosummary_generate = True
autodoc_member_order = "groupwise"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True

typehints_defaults = "braces"
typehints_use_signature = False
typehints_use_signature_return = False
always_use_bars_union = True
typehints_document_rtype = True
typehints_document_rtype_none = False

# -- myst / myst-nb ----------------------------------------------------------------------------------------------

myst_heading_anchors = 3
myst_enable_extensions = [
    "amsmath",
    "colon_fence",
    "deflist",
    "dollarmath",
    "html_image",
    "html_admonition",
    "substitution",
]
myst_url_schemes = ("http", "https", "mailto")
myst_substitutions = {"release": release}
nb_execution_mode = "off"  # tutorials are stored executed, with their outputs
nb_output_stderr = "remove"
nb_merge_streams = True

# -- bibliography -------------------------------------------------------------------------------------------------

bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# -- intersphinx --------------------------------------------------------------------------------------------------

_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
}


def _intersphinx_online() -> bool:
    """Whether to fetch intersphinx inventories: forced by the environment, on for Read the Docs, else probed."""
    forced = os.environ.get("CELLFORMERS_DOCS_OFFLINE", "").strip().lower()
    if forced in {"1", "true", "yes", "on"}:
        return False
    if forced in {"0", "false", "no", "off"}:
        return True
    if os.environ.get("READTHEDOCS") == "True":
        return True
    try:
        with socket.create_connection(("docs.python.org", 443), timeout=2):
            return True
    except OSError:
        return False


intersphinx_mapping = _INTERSPHINX if _intersphinx_online() else {}
intersphinx_timeout = 30

# -- HTML ---------------------------------------------------------------------------------------------------------

_TUTORIALS = sorted(p.stem for p in (Path(__file__).parent.parent / "tutorials" / "sources").glob("[!_]*.py"))

html_theme = "pydata_sphinx_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["css/custom.css"]
html_show_sourcelink = True
html_theme_options = {
    "github_url": repository_url,
    "use_edit_page_button": False,
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 7,
    # tutorials get the page's width for their figures: no "on this page" column (their headings are few); named one
    # by one, since a page matching two wildcard patterns is a warning
    "secondary_sidebar_items": {
        "**": ["page-toc", "sourcelink"],
        **{f"tutorials/notebooks/{name}": [] for name in _TUTORIALS},
    },
}
# nor the section navigation on the left
html_sidebars = {"tutorials/notebooks/*": []}
html_context = {
    "github_user": "cellformers",
    "github_repo": "cellformers",
    "github_version": "main",
    "doc_path": "docs",
}

# sphinx-copybutton: copy code without prompts and outputs
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False
