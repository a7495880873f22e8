"""`gentune fid` and `gentune face-rate`: the report's two GAN metrics on folders of images."""
from __future__ import annotations

import argparse
from typing import Any

from search.commands import Help
from trainables.errors import GentuneError

_FID_DIMS = (64, 192, 768, 2048)


def _fid(args: argparse.Namespace) -> int:
    from trainables.metrics import fid  # imported here: torch/pytorch-fid load only when used

    if args.batch_size < 1:
        raise GentuneError(f"--batch-size must be >= 1, got {args.batch_size}")
    value = fid.fid_between(
        args.path1,
        args.path2,
        weights=args.weights,
        dims=args.dims,
        batch_size=args.batch_size,
        device=args.device,
        quiet=args.quiet,
        allow_download=args.download,
    )
    print(f"FID: {value}")
    return 0


def _face_rate(args: argparse.Namespace) -> int:
    from trainables.metrics import face

    rate, single, total = face.face_rate_folder(args.dir)
    print(f"face rate: {rate:.3f} ({single}/{total} images with exactly one face)")
    return 0


def register(subparsers: Any) -> None:
    """Add the `fid` and `face-rate` subcommands to the `gentune` parser."""
    p = subparsers.add_parser(
        "fid",
        help="FID between two image folders or .npz stats files (pytorch-fid's network and stats)",
        description=(
            "Frechet Inception Distance between PATH1 and PATH2, each an image folder "
            "(png/jpg/...; non-recursive) or a pytorch-fid .npz stats file, as `python -m pytorch_fid`. "
            "Weights: --weights, then $GENTUNE_FID_WEIGHTS, then the torch hub cache."
        ),
        formatter_class=Help,
    )
    p.add_argument("path1", metavar="PATH1", help="image folder or .npz stats file")
    p.add_argument("path2", metavar="PATH2", help="image folder or .npz stats file")
    p.add_argument(
        "--weights",
        metavar="FILE",
        default=None,
        help="pytorch-fid Inception weights file (pt_inception-2015-12-05-6726825d.pth); "
        "None looks at $GENTUNE_FID_WEIGHTS, then <torch hub dir>/checkpoints/",
    )
    p.add_argument(
        "--dims", type=int, default=2048, choices=_FID_DIMS, help="Inception feature dimensionality (2048 = pool3, the FID)"
    )
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward pass")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu; None picks cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--download",
        action="store_true",
        help="if no weights file is found, let pytorch-fid download it into the torch hub cache (needs internet)",
    )
    p.set_defaults(func=_fid)

    q = subparsers.add_parser(
        "face-rate",
        help="share of images in which dlib's frontal face detector finds exactly one face",
        description=(
            "Face rate of the images in DIR (non-recursive): dlib's HOG frontal face detector with "
            "one upsampling step; an image counts when exactly one face is found (the report's grader rule)."
        ),
        formatter_class=Help,
    )
    q.add_argument("dir", metavar="DIR", help="folder of images (png/jpg/...)")
    q.set_defaults(func=_face_rate)
