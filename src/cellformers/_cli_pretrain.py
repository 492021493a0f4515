"""``python -m cellformers pretrain``: the command line of :func:`cellformers.pretrained.pretrain`."""

from __future__ import annotations

import json
import logging

from cellformers._settings import settings
from cellformers.pretrained import _recipe as _pretrain
from cellformers.pretrained._corpus import MIN_GENES

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ command line
def add_pretrain_parser(sub) -> None:
    """Add the ``pretrain`` sub-command to the ``python -m cellformers`` parser."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a model on a corpus of .h5ad files and write a registry-ready checkpoint",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, choices=list(_pretrain.PRETRAIN_MODELS), help="model to pretrain")
    p.add_argument("--data", required=True, nargs="+", help=".h5ad files, folders of them, or glob patterns")
    p.add_argument("--out", required=True, help="output folder (checkpoints, archive, card)")
    p.add_argument(
        "--preset",
        default=None,
        help="model size: xtrimogene tiny/3M/10M/100M, scformer paper/tiny, scpalm paper/small/tiny",
    )
    p.add_argument("--vocab", default=None, help="reference vocabulary: a name or a vocabulary JSON file")
    p.add_argument("--epochs", type=int, default=5, help="number of epochs (default 5, as xTrimoGene-100M)")
    p.add_argument(
        "--no-progress-bar", action="store_true", help="no progress bars (for logs of batch jobs and notebooks)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="cells per minibatch and process (default 64)")
    p.add_argument("--max-cells", type=int, default=None, help="use at most this many cells of each file")
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    p.add_argument("--gene-symbols", default=None, help="var column with gene symbols (default: var_names)")
    p.add_argument("--case-insensitive", action="store_true", help="match gene symbols ignoring case")
    p.add_argument("--min-genes", type=int, default=MIN_GENES, help="keep cells with more expressed genes (200)")
    p.add_argument("--val-fraction", type=float, default=0.02, help="cells held out for validation (0.02)")
    p.add_argument("--model-kwargs", default="{}", help="JSON object of model options, e.g. '{\"encoder_dim\": 64}'")
    p.add_argument("--plan-kwargs", default="{}", help="JSON object of training-plan options, e.g. '{\"lr\": 1e-4}'")
    p.add_argument(
        "--precision",
        default="auto",
        help="Lightning precision: auto (default: bf16 where the CPU/GPU has bf16 units, else 32), 32 or bf16-mixed",
    )
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu)")
    p.add_argument("--devices", default="auto", help="number of devices or 'auto'")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--name", default=None, help="name of the checkpoint and card (default <model>-<preset>)")
    p.add_argument("--url", default=None, help="public URL the archive will have (for the card)")
    p.add_argument("--license", default="unknown", help="licence of the weights (for the card)")
    p.add_argument("--citation", default="", help="citation (for the card)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: cellformers.settings.seed)")


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        msg = f"`{flag}` must be a JSON object, got {text!r} ({err})."
        raise ValueError(msg) from err
    if not isinstance(value, dict):
        msg = f"`{flag}` must be a JSON object, got {text!r}."
        raise ValueError(msg)
    return value


def run_pretrain_command(args) -> int:
    """Run ``python -m cellformers pretrain`` with parsed arguments; print the card snippet."""
    devices = args.devices if args.devices == "auto" else int(args.devices)
    # the flag holds for this command only: the CLI also runs in-process (notebooks, tests)
    progress_bar = settings.progress_bar
    if args.no_progress_bar:
        settings.progress_bar = False
    try:
        result = _pretrain.pretrain(  # looked up at call time: tests replace it
            args.model,
            args.data,
            args.out,
            preset=args.preset,
            vocab=args.vocab,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_cells=args.max_cells,
            layer=args.layer,
            gene_symbols=args.gene_symbols,
            case_sensitive=not args.case_insensitive,
            min_genes=args.min_genes,
            val_fraction=args.val_fraction,
            model_kwargs=_json_arg(args.model_kwargs, "--model-kwargs"),
            plan_kwargs=_json_arg(args.plan_kwargs, "--plan-kwargs"),
            precision=args.precision,
            accelerator=args.accelerator,
            devices=devices,
            strategy=args.strategy,
            num_workers=args.num_workers,
            resume=args.resume,
            name=args.name,
            url=args.url,
            license=args.license,
            citation=args.citation,
            seed=args.seed,
        )
    finally:
        settings.progress_bar = progress_bar
    if result is not None:
        print(f"checkpoint: {result.checkpoint}\narchive:    {result.archive}\nsha256:     {result.card.sha256}\n")
        print("Register it with:\n")
        print(result.snippet)
    return 0
