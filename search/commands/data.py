"""`gentune mnistm`: MNIST-M built from MNIST and colour photos (Ganin & Lempitsky's recipe)."""
from __future__ import annotations

import argparse
import sys
import time

from search.commands import Help
from trainables.errors import SpecError


def cmd_mnistm(args: argparse.Namespace) -> int:
    from trainables import formats

    if args.limit < 0:
        raise SpecError(f"--limit must be 0 (all) or a positive number of digits, got {args.limit}")
    photos = formats.read_photos(args.photos)
    splits = ("train", "test") if args.split == "both" else (args.split,)
    digits = {s: formats.read_mnist(args.mnist, s) for s in splits}  # every input read before anything is written
    print(f"gentune mnistm: {len(photos)} photos from {args.photos}", file=sys.stderr)
    for split, (images, labels) in digits.items():
        if args.limit:
            images, labels = images[:args.limit], labels[:args.limit]
        t0, every = time.perf_counter(), max(1, len(images) // 10)

        def progress(done: int, total: int) -> None:
            if done % every == 0 or done == total:
                print(f"gentune mnistm: {split} {done}/{total} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

        seed = args.seed + (split == "test")  # the two splits draw different crops
        formats.build_mnistm(images, labels, photos, args.out, split, seed=seed, progress=progress)
    print(f"gentune mnistm: wrote {args.out}; train on it with source: mnistm, root: {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("mnistm", formatter_class=Help,
                       help="build MNIST-M from MNIST and colour photos (|photo crop - digit| per channel)",
                       description="Build MNIST-M as Ganin & Lempitsky did: each MNIST digit d becomes |p - d| per "
                                   "channel, p a random crop of a random colour photo (they used BSDS500). Written in "
                                   "MNIST-M's own format (mnist_m_<split>/*.png, mnist_m_<split>_labels.txt); an "
                                   "existing split in --out is replaced only once the new one is complete.")
    p.add_argument("mnist", help="folder with MNIST's idx files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz])")
    p.add_argument("photos", help="folder of colour photos (.png, .jpg, ...), each at least 28x28")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", choices=("train", "test", "both"), default="both", help="which MNIST split(s) to build")
    p.add_argument("--limit", type=int, default=0, help="only the first N digits of each split (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the photo and crop choice (the test split uses seed + 1)")
    p.set_defaults(func=cmd_mnistm)
