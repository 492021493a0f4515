"""Build the tutorial notebooks from their sources and execute them (``make tutorials``).

Each tutorial is written as a Python script in the "percent" format (as jupytext writes it) in
``tutorials/sources/<name>.py``: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are
comments. This script turns every source into ``tutorials/<name>.ipynb``, runs it top to bottom in a fresh Jupyter
kernel (nbclient) and stores it with its outputs; the documentation shows the stored outputs and never re-runs a
notebook. Sources whose name starts with ``_`` (the CI smoke notebook) are not published.

Usage, from the repository root::

    python tutorials/run.py                          # every tutorial
    python tutorials/run.py 02_xtrimogene            # one (names without .py)
    python tutorials/run.py --threads 1              # OMP/MKL threads of the kernel (default: torch's choice)
    python tutorials/run.py --no-execute             # only rebuild the notebooks from the sources, without outputs
    python tutorials/run.py --check                  # fail if a stored notebook is stale or was not fully run
    python tutorials/run.py --markdown-only          # text edits only: keep the outputs of unchanged code cells

The kernel starts in a scratch folder. The data are the real datasets of the ``shared/data`` folder next to the
repository (``CELLFORMERS_SHARED`` points elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
_CELL = re.compile(r"^# %%(?P<title>[^\[]*)(?:\[(?P<kind>\w+)\])?\s*$")

logger = logging.getLogger("tutorials")

__all__ = ["build_notebook", "check", "execute", "main", "parse_percent", "refresh_markdown"]


def parse_percent(text: str) -> list[tuple[str, str]]:
    """Cells ``(kind, source)`` of a percent-format script; ``kind`` is ``"code"`` or ``"markdown"``.

    Text before the first ``# %%`` marker (a module docstring, say) is ignored. Markdown lines lose their leading
    ``# `` (or a lone ``#``). Leading and trailing blank lines of a cell are dropped, and so are empty cells.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _CELL.match(line)
        if match:
            kind = "markdown" if (match.group("kind") or "").lower() in {"markdown", "md"} else "code"
            cells.append((kind, []))
            continue
        if not cells:
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            if line.startswith("# "):
                line = line[2:]
            elif line.strip() == "#":
                line = ""
        lines.append(line)
    out = []
    for kind, lines in cells:
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def build_notebook(source: Path):
    """An unexecuted notebook (``nbformat`` v4) from a percent-format script."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, text in parse_percent(source.read_text()):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["cellformers"] = {"source": f"tutorials/sources/{source.name}"}
    # stable cell ids, so that re-running a notebook does not rewrite every id
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem.lstrip('_')}-{i}"
    return nb


def execute(nb, *, cwd: Path, timeout: int) -> float:
    """Run every cell in a fresh ``python3`` kernel started in ``cwd``; return the wall time in seconds."""
    from nbclient import NotebookClient

    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    started: dict[int, float] = {}

    def on_start(cell, cell_index):
        started[cell_index] = time.perf_counter()

    def on_executed(cell, cell_index, execute_reply):
        seconds = time.perf_counter() - started.get(cell_index, time.perf_counter())
        n = code.index(cell_index) + 1 if cell_index in code else 0
        logger.info(
            f"  cell {n}/{len(code)} ({seconds:.0f} s): {cell.source.splitlines()[0][:70] if cell.source else ''}"
        )

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=False,
        on_cell_start=on_start,
        on_cell_executed=on_executed,
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def refresh_markdown(path: Path, source: Path) -> bool:
    """Rewrite the Markdown cells of a stored notebook from its source, keeping the outputs of its code cells.

    Only when the source's code cells are exactly the stored ones (same order, same text): outputs then still belong
    to the code. Returns whether the notebook was updated.
    """
    import nbformat

    if not path.is_file():
        return False
    stored = nbformat.read(path, as_version=4)
    fresh = build_notebook(source)
    old_code = [c for c in stored.cells if c.cell_type == "code"]
    new_code = [c for c in fresh.cells if c.cell_type == "code"]
    if [c.source for c in old_code] != [c.source for c in new_code]:
        return False
    for new, old in zip(new_code, old_code, strict=True):
        new.outputs, new.execution_count = old.outputs, old.execution_count
        new.metadata = old.metadata
    fresh.metadata["cellformers"] = {**stored.metadata.get("cellformers", {}), **fresh.metadata["cellformers"]}
    nbformat.write(fresh, path)
    logger.info(f"updated the Markdown of {path}")
    return True


def _threads_env(threads: int | None) -> None:
    if threads is None:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)


def check(path: Path, source: Path) -> list[str]:
    """Problems of a stored notebook: stale (its cells differ from the source), not run, or run with an error."""
    import nbformat

    problems = []
    if not path.is_file():
        return [f"{path.name}: missing; run `python tutorials/run.py {source.stem}`"]
    nb = nbformat.read(path, as_version=4)
    expected = parse_percent(source.read_text())
    stored = [(c.cell_type, c.source) for c in nb.cells]
    if stored != expected:
        problems.append(f"{path.name}: differs from {source.name}; run `python tutorials/run.py {source.stem}`")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"{path.name}: cell {i} was not executed")
            break
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            problems.append(f"{path.name}: cell {i} stored an error")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="tutorials to build (default: all in tutorials/sources)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    parser.add_argument("--check", action="store_true", help="check the stored notebooks instead of building")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed for one cell (default 1200)")
    parser.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of the kernel")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the notebooks (default: tutorials/)")
    parser.add_argument(
        "--markdown-only",
        action="store_true",
        help="update the Markdown cells of stored notebooks whose code cells are unchanged, keeping their outputs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    available = {p.stem: p for p in sorted(SOURCES.glob("*.py"))}
    names = args.names or [n for n in available if not n.startswith("_")]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown tutorial(s) {unknown}; available: {sorted(available)}")

    if args.markdown_only:
        failed = [n for n in names if not refresh_markdown(args.out / f"{n}.ipynb", available[n])]
        for n in failed:
            logger.error(f"{n}: code cells changed (or no stored notebook); run `python tutorials/run.py {n}`")
        return 1 if failed else 0

    if args.check:
        problems = [p for n in names for p in check(args.out / f"{n}.ipynb", available[n])]
        for p in problems:
            logger.error(p)
        return 1 if problems else 0

    import nbformat

    _threads_env(args.threads)
    # the kernel runs in a scratch folder (training logs and the like stay out of the repository), so the data
    # folder is passed as an absolute path
    os.environ.setdefault("CELLFORMERS_SHARED", str(HERE.parent.parent / "shared"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = build_notebook(available[name])
        if not args.no_execute:
            logger.info(f"executing {name} ...")
            with tempfile.TemporaryDirectory(prefix=f"tutorial-{name}-") as scratch:
                seconds = execute(nb, cwd=Path(scratch), timeout=args.timeout)
            nb.metadata["cellformers"].update(
                {
                    "executed": datetime.now(UTC).strftime("%Y-%m-%d"),
                    "wall_seconds": round(seconds, 1),
                    "threads": args.threads,
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
                }
            )
            logger.info(f"{name}: {seconds:.0f} s")
        path = args.out / f"{name}.ipynb"
        nbformat.write(nb, path)
        logger.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
