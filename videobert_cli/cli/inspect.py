"""`videobert info` and `validate`: read an output folder and report on it (nothing is written).

Both are thin: `store.reader` describes a folder and `store.validate` checks it; this layer
formats their reports for a person, or prints them as JSON for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .messages import fail


@click.command()
@click.argument("out_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def info(out_dir: Path, as_json: bool) -> None:
    """Describe an output folder: videos, clips, dims, models, config."""
    from ..store.reader import FeatureError, describe_precisions, open_features

    try:
        features = open_features(out_dir)
        report = features.describe()
    except (FeatureError, OSError) as exc:
        fail(EXIT_USAGE, exc)
    if as_json:
        click.echo(json.dumps(report, indent=None, sort_keys=True))
        return
    dims = report["dims"]
    lines = [
        f"output:      {report['out_dir']} (schema v{report['schema_version']}, {len(report['shards'])} shard(s))",
        f"videos:      {report['videos']} ({report['video_seconds']:.1f} s of video)",
        f"clips:       {report['clips']} ({report['clips_with_text']} with text)",
        f"dims:        fused {dims['fused']}, video {dims['video']}, text {dims['text']} ({report['feature_dtype']})",
        f"precision:   {describe_precisions(report['precision'])}",
    ]
    for model in report["models"]:
        lines.append(f"{model['role'] + ' model:':<14}{model['name']} [{model['weights']}] sha256 {model['sha256'][:16]}"
                     f"  ({model['source']})")
    if report["video_weights_random"]:
        lines.append("WARNING:     video weights are RANDOM (untrained)")
    cfg = report["config"]
    lines.append(f"clips:       {cfg['clip_mode']} mode, {cfg['clip_seconds']} s, {cfg['frames_per_clip']} frames/clip")
    lines.append(f"decoders:    {report['decoders']}; transcripts: {report['transcript_formats']}")
    if report["configs_differ"]:
        lines.append("NOTE:        shards were written with different configs")
    click.echo("\n".join(lines))


@click.command()
@click.argument("out_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def validate(out_dir: Path, as_json: bool) -> None:
    """Check every shard and the failure log of an output folder.

    Checks that each shard opens, has the known schema version, consistent
    shapes and row counts, no NaN/Inf in features, that no video is present
    twice (a changed video extracted again supersedes its old rows: a note),
    and that failures.jsonl parses. Shards extracted at different precisions
    are a warning, not a problem. Exit 0 when all is well, 1 naming each
    problem."""
    from ..store.validate import validate as run_validate

    report = run_validate(out_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{out_dir}: {report.shards} shard(s), {report.videos} video(s), {report.clips} clip(s), "
                   f"{report.superseded} superseded, {report.failures_logged} failure record(s)")
        for note in report.notes:
            click.echo(f"note: {note}")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo("OK" if report.ok else f"{len(report.problems)} problem(s)")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
