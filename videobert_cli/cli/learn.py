"""`videobert train`, `evaluate` and `fuse`: learning the fusion on stored features.

Thin click layer over learn/training.py, learn/evaluation.py and learn/apply.py: parse options,
call the library, print a JSON summary (or a table) on stdout. A TrainingError (features, options
or a checkpoint that cannot be used) exits 2, an error while running exits 1 (exit_codes.LEARN_HELP).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..exit_codes import EXIT_USAGE, LEARN_HELP
from .messages import fail, stored_feature_errors, warn

_FEATURES = click.argument("features_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
_CHECKPOINT = click.option("--fusion-checkpoint", "checkpoint", required=True,
                           type=click.Path(path_type=Path, dir_okay=False),
                           help="A checkpoint written by `videobert train`.")
_DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@click.command(epilog=LEARN_HELP)
@_FEATURES
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Checkpoint file to write (e.g. fusion.pt).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Initial weights (the fusion `extract` uses with this fusion_seed), clip order, negatives.")
@click.option("--epochs", type=int, default=50, show_default=True, help="At most this many epochs.")
@click.option("--patience", type=int, default=5, show_default=True,
              help="Stop after this many epochs without a better validation loss (the best epoch is kept).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Clips per step (the contrastive loss scores batch-size^2 pairs).")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--alignment-weight", type=float, default=1.0, show_default=True,
              help="Weight of the aligned-vs-shuffled (binary) loss.")
@click.option("--contrastive-weight", type=float, default=1.0, show_default=True,
              help="Weight of the symmetric in-batch InfoNCE loss.")
@click.option("--same-video-negatives", type=float, default=0.5, show_default=True,
              help="Share of alignment negatives taken from another clip of the same video (the rest from "
                   "other videos).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of the videos held out for validation (chosen by a seeded hash of each video's file "
                   "name, size and length).")
@click.option("--val-videos", metavar="GLOB",
              help="Validate on the videos whose path (as given to extract, or absolute) matches GLOB instead.")
@click.option("--dim", type=int, help="Fusion width [the features' fusion_dim].")
@click.option("--heads", type=int, help="Attention heads [the features' fusion_heads].")
@_DEVICE
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes reading the shards.")
@click.option("--cache-mb", type=int, default=1024, show_default=True,
              help="Keep up to this many MB of clip features in memory once read (0: always read the shards).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or warnings; errors only.")
def train(features_dir: Path, out_path: Path, overwrite: bool, quiet: bool, **options: object) -> None:
    """Train the fusion (and an alignment head) on stored features.

    FEATURES_DIR must come from `extract --save-frames --save-tokens`. Videos are split into
    training and validation; the best epoch by validation loss is written to -o with the feature
    models, the metrics and a fingerprint of the data. One JSON summary line goes to stdout.
    """
    from ..learn.corpus import TrainingError, open_corpus
    from ..learn.training import TrainConfig
    from ..learn.training import train as run_training

    if out_path.exists() and not overwrite:
        fail(EXIT_USAGE, f"{out_path} exists; pass --overwrite to replace it, or choose another -o")
    try:
        config = TrainConfig(**options)
        if not quiet:
            models = open_corpus(features_dir).models
            if any(m["sha256"] == "random" for m in models):
                warn("the features come from RANDOM (untrained) weights, which differ in every extract run: "
                      "the checkpoint will fit only these very features")
    except TrainingError as exc:
        fail(EXIT_USAGE, exc)

    from tqdm import tqdm

    bar = tqdm(unit="step", disable=not _show_progress(quiet), file=sys.stderr, dynamic_ncols=True)

    def on_start(total: int) -> None:
        bar.reset(total=total)

    def progress(steps: int, losses: dict[str, float]) -> None:
        bar.update(steps - bar.n)
        bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in losses.items()}, refresh=False)

    with stored_feature_errors(), bar:  # TrainingFailed is a RuntimeError: exit 1
        result = run_training(features_dir, out_path, config, progress=progress, on_start=on_start)
    summary = result.to_dict()
    summary.pop("history")
    click.echo(json.dumps(summary))


@click.command(epilog=LEARN_HELP)
@_FEATURES
@_CHECKPOINT
@click.option("--max-clips", type=int, default=1000, show_default=True,
              help="Score at most this many held-out clips (a seeded sample): every pair of them is scored.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample of clips and alignment negatives.")
@_DEVICE
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def evaluate(features_dir: Path, checkpoint: Path, max_clips: int, seed: int, device: str, as_json: bool) -> None:
    """Retrieval and alignment on held-out videos: trained fusion vs. its untrained seed.

    Held out are the videos of FEATURES_DIR the checkpoint did not train on (its validation videos,
    or all of another features folder). Reports clip->text and text->clip recall@1/5/10 and median
    rank, alignment accuracy and ROC-AUC, for the trained weights, the untrained starting weights and
    chance.
    """
    from ..learn.evaluation import evaluate as run_evaluation
    from ..learn.evaluation import format_report

    with stored_feature_errors():
        report = run_evaluation(features_dir, checkpoint, device=device, max_clips=max_clips, seed=seed)
    click.echo(json.dumps(report, sort_keys=True) if as_json else format_report(report))


@click.command(epilog=LEARN_HELP)
@_FEATURES
@_CHECKPOINT
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the re-fused shards (same schema, same shard names).")
@_DEVICE
@click.option("--batch-size", type=int, default=256, show_default=True, help="Clips per fusion forward.")
@click.option("--overwrite", is_flag=True, help="Replace the shards already in the output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def fuse(features_dir: Path, checkpoint: Path, out_dir: Path, device: str, batch_size: int, overwrite: bool,
         quiet: bool) -> None:
    """Recompute the fused embeddings of stored features with a trained fusion (no decoding).

    FEATURES_DIR must come from `extract --save-frames --save-tokens`. Writes NEW_DIR (-o) in the
    same schema with the checkpoint recorded as the fusion model; one JSON summary line to stdout.
    """
    from tqdm import tqdm

    from ..learn.apply import apply_checkpoint

    bar = tqdm(unit="clip", disable=not _show_progress(quiet), file=sys.stderr)
    with stored_feature_errors(), bar:
        summary = apply_checkpoint(features_dir, checkpoint, out_dir, device=device, batch_size=batch_size,
                                   overwrite=overwrite, on_shard=lambda _path, clips: bar.update(clips))
    click.echo(json.dumps(summary))
