"""Take a training run's data and Python packages to a lent GPU machine (docs/training.md).

    python experiments/gpu_pack.py pack [--splits train train_extra val] [--cases N]
    python3 experiments/gpu_pack.py unpack DEST          # on the GPU machine

A call on the GPU machine carries at most 64 MiB, the tracked files (weights and the
runs' states) already about 46 MB of it, and OpenKBP's folder is 80 MB of gzip NIfTI.
Decompressed and packed with LZMA (xz), a 128^3 int16 CT and its masks take about
0.14 MB, so the 173 training and val cases make about 24 MB, in parts of at most
``PART_MB`` that travel in successive calls to the same (warm) machine, each call's
``carry`` naming one part (files a call leaves in the working tree stay there).

``pack`` writes, in the repository's ``.gpu/`` folder (git-ignored through
``.git/info/exclude``):
- ``part-N/openkbp.tar.xz``: ``split.json`` (of the packed cases), ``manifest.json`` and
  the licence (part 1)
  and, per case of the splits, ``ct.nii`` and ``mask_*.nii`` (``oar_labelmap.nii.gz`` is
  not read by training);
- ``wheels/``: the pure-Python packages the trainer needs that the GPU machine's image
  lacks (``WHEELS``; /work/.library/device/KINDS.md lists what it has), from the package
  registry, as ``pip download`` gets them.

``unpack DEST`` (standard library only: it runs before the wheels are installed) writes
DEST/pt_N/ct.nii.gz and mask_*.nii.gz, the layout of ../shared/data/openkbp, from every
part in ``.gpu/``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openkbp"
PACK = ROOT / ".gpu"
ARCHIVE = "openkbp.tar.xz"
PART_MB = 10.0
TOP_FILES = ("split.json", "manifest.json", "LICENSE_repo_MIT.txt")
# Versions as in requirements.txt; the image has torch, numpy, scipy, scikit-image, tqdm,
# pillow, pyyaml, packaging (KINDS.md), so only these travel.
WHEELS = ("monai==1.5.1", "nibabel==5.3.2", "pydicom==3.0.1")


def pack(splits: list[str], cases: int | None) -> list[Path]:
    """Write ``.gpu/part-N/openkbp.tar.xz`` of the cases of ``splits`` (the first
    ``cases`` of each when given), a new part when one passes ``PART_MB``, and download
    ``WHEELS`` into ``.gpu/wheels``; returns the archives.

    Raises:
        FileNotFoundError: ../shared/data/openkbp is not beside the repository.
        subprocess.CalledProcessError: pip could not download a wheel.
    """
    split = json.loads((DATA / "split.json").read_text())
    names = [c for s in splits for c in split[s][:cases]]
    PACK.mkdir(exist_ok=True)
    _exclude_from_git()
    archives: list[Path] = []
    tar = None
    for case in [None, *names]:  # None: the top files, first
        if tar is None or archives[-1].stat().st_size > PART_MB * 1e6:
            if tar is not None:
                tar.close()
            archives.append(PACK / f"part-{len(archives) + 1}" / ARCHIVE)
            archives[-1].parent.mkdir(exist_ok=True)
            # preset 1: 11 % larger than preset 6, 4x faster
            tar = tarfile.open(archives[-1], "w:xz", preset=1)
        if case is None:
            for name in TOP_FILES[1:]:
                if (DATA / name).exists():
                    tar.add(DATA / name, arcname=name)
            # split.json lists only the packed cases: the trainer reads every case it names.
            packed = json.dumps({k: [c for c in v if c in names] for k, v in split.items()}).encode()
            info = tarfile.TarInfo(TOP_FILES[0])
            info.size = len(packed)
            tar.addfile(info, io.BytesIO(packed))
            continue
        for path in sorted((DATA / case).glob("*.nii.gz")):
            if path.name.startswith("oar_labelmap"):
                continue
            raw = gzip.decompress(path.read_bytes())
            info = tarfile.TarInfo(f"{case}/{path.name[: -len('.gz')]}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        tar.fileobj.flush()
    tar.close()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(PACK / "wheels"),
            *WHEELS,
        ],
        check=True,
    )
    for archive in archives:
        print(f"{archive.relative_to(ROOT)}: {archive.stat().st_size / 1e6:.1f} MB")
    print(f"{len(names)} cases; wheels: {sum(f.stat().st_size for f in (PACK / 'wheels').iterdir()) / 1e6:.1f} MB")
    return archives


def unpack(dest: Path) -> int:
    """Extract every ``.gpu/part-N/openkbp.tar.xz`` into ``dest`` with each ``.nii``
    gzip-compressed again (level 1: the trainer reads ``ct.nii.gz``); returns the number
    of cases.

    Raises:
        FileNotFoundError: no part is in ``.gpu/`` (a call carried none).
    """
    archives = sorted(PACK.glob(f"part-*/{ARCHIVE}"))
    if not archives:
        raise FileNotFoundError(f"no {PACK}/part-N/{ARCHIVE}")
    dest.mkdir(parents=True, exist_ok=True)
    cases = set()
    for archive in archives:
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.name.endswith(".nii"):
                    cases.add(target.parent.name)
                    target.with_name(target.name + ".gz").write_bytes(gzip.compress(data, 1))
                else:
                    target.write_bytes(data)
    return len(cases)


def _exclude_from_git() -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--splits", nargs="+", default=["train", "train_extra", "val"])
    a.add_argument("--cases", type=int, help="only the first N cases of each split (a trial)")
    b = sub.add_parser("unpack")
    b.add_argument("dest", type=Path)
    args = p.parse_args()
    if args.command == "pack":
        pack(args.splits, args.cases)
    else:
        print(f"{args.dest}: {unpack(args.dest)} cases")


if __name__ == "__main__":
    main()
