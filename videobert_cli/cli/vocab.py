"""`videobert vocab`, `tokenize` and `export-sequences`: visual words (VideoBERT's video tokens).

Thin click layer over learn/vocab.py and learn/sequences.py: parse options, call the library, print
one JSON summary line on stdout. A TrainingError (features, options, or a vocabulary fitted on
features of other models) exits 2, an error while running exits 1, a folder held by a run 75.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..exit_codes import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE
from .messages import fail, stored_feature_errors

VOCAB_HELP = f"""\b
Exit codes:
  {EXIT_OK}  done
  {EXIT_FAILED}  the run failed (output not writable, out of memory)
  {EXIT_USAGE}  usage error: bad options, features without visual words (export), a
     vocabulary fitted on features of other models, or not a vocabulary file
  {EXIT_LOCKED} another run holds the features folder (tokenize; --wait to queue)"""

_FEATURES = click.argument("features_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
_DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
_QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def _bar(quiet: bool, unit: str):
    from tqdm import tqdm

    return tqdm(unit=unit, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)


def _device(spec: str):
    from ..learn.corpus import TrainingError
    from ..learn.training import resolve_device

    try:
        return resolve_device(spec)
    except TrainingError as exc:
        fail(EXIT_USAGE, exc)


@click.command(epilog=VOCAB_HELP)
@_FEATURES
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Vocabulary file to write (e.g. vocab.h5).")
@click.option("--branching", type=int, default=12, show_default=True, help="Children per node (k of each k-means).")
@click.option("--depth", type=int, default=4, show_default=True, help="Levels: branching^depth words at most.")
@click.option("--field", type=click.Choice(["video_features", "fused"]), default="video_features", show_default=True,
              help="The clip feature to cluster.")
@click.option("--sample", type=int, default=200_000, show_default=True,
              help="Fit on at most this many clips (a seeded sample, read from the shards).")
@click.option("--seed", type=int, default=0, show_default=True, help="The sample and every k-means++ start.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Lloyd iterations per node, at most.")
@click.option("--tol", type=float, default=1e-4, show_default=True,
              help="Stop a node's iterations when no centroid moves more than tol x the mean feature variance.")
@_DEVICE
@click.option("--overwrite", is_flag=True, help="Replace an existing vocabulary file.")
@_QUIET
def vocab(features_dir: Path, out_path: Path, device: str, overwrite: bool, quiet: bool, **options: object) -> None:
    """Fit a visual vocabulary: hierarchical k-means on stored clip features.

    Writes -o (HDF5: the tree's centroids, the feature models, field, seed and the sample's
    fingerprint); one JSON summary line (levels, words used, inertia per level, seconds) to stdout.
    """
    from ..learn.vocab import VocabConfig, build_vocab
    from ..store.vocab_file import write_vocab

    if out_path.exists() and not overwrite:
        fail(EXIT_USAGE, f"{out_path} exists; pass --overwrite to replace it, or choose another -o")
    torch_device = _device(device)
    bar = _bar(quiet, "level")

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "sampled":
            bar.reset(total=total)
            bar.set_postfix({"sample": done}, refresh=False)
        else:
            bar.update(done - bar.n)

    with stored_feature_errors(), bar:
        fitted, summary = build_vocab(features_dir, VocabConfig(**options), torch_device, progress=progress)
        summary["vocab"] = str(out_path)
        summary["sha256"] = write_vocab(out_path, fitted)
    click.echo(json.dumps(summary))


@click.command(epilog=VOCAB_HELP)
@_FEATURES
@click.option("--vocab", "vocab_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A vocabulary written by `videobert vocab`.")
@_DEVICE
@click.option("--batch-size", type=int, default=65536, show_default=True, help="Clips assigned at a time.")
@click.option("--wait", is_flag=True, help="If a run holds the folder, wait for it instead of exiting 75.")
@_QUIET
def tokenize(features_dir: Path, vocab_path: Path, device: str, batch_size: int, wait: bool, quiet: bool) -> None:
    """Add each clip's visual word (clips/visual_word, clips/visual_path) to every shard.

    Each shard is rewritten atomically (schema 1.1); tokenizing again replaces the words. One JSON
    summary line to stdout.
    """
    from ..learn.vocab import tokenize as run_tokenize

    if batch_size < 1:
        fail(EXIT_USAGE, "--batch-size must be >= 1")
    torch_device = _device(device)
    bar = _bar(quiet, "clip")
    with stored_feature_errors(), bar:
        summary = run_tokenize(features_dir, vocab_path, torch_device, wait=wait, batch_size=batch_size,
                               progress=bar.update, on_start=lambda total: bar.reset(total=total))
    click.echo(json.dumps(summary))


@click.command("export-sequences", epilog=VOCAB_HELP)
@_FEATURES
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="JSON Lines file to write (one video a line).")
@click.option("--format", "fmt", type=click.Choice(["videos", "hf"]), default="videos", show_default=True,
              help="videos: nested clips and the sequence; hf: flat columns for datasets.load_dataset('json').")
@_QUIET
def export_sequences(features_dir: Path, out_path: Path, fmt: str, quiet: bool) -> None:
    """Write each video's interleaved sequence: a clip's text tokens, [SEP], its visual word, with times.

    FEATURES_DIR must be tokenized (`videobert tokenize`). One JSON summary line to stdout.
    """
    from ..learn.sequences import export_sequences as run_export

    bar = _bar(quiet, "clip")
    with stored_feature_errors(), bar:
        summary = run_export(features_dir, out_path, fmt, on_video=bar.update)
    click.echo(json.dumps(summary))
