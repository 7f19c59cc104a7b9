#!/usr/bin/env python
"""CPU forward time of ImageEncoder per trunk, for one 6-camera sample at two input sizes.

Eval mode, ``torch.inference_mode``, random weights (speed does not depend on them). Each cell
is the median of --repeats timed forwards after one warm-up forward (first-call allocations
and oneDNN kernel selection are not counted). Prints a markdown table; no target, exit 0.

    python benchmarks/image_encoder.py [--trunks resnet18,resnet50] [--sizes 704x256,352x128]
        [--cams 6] [--out-channels 256] [--out-stride 16] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bev_mtl.models.image_encoder import TRUNKS, ImageEncoder  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def time_forward(encoder: ImageEncoder, images: torch.Tensor, repeats: int) -> float:
    """Median seconds per forward of `images` [N, 3, H, W] after one warm-up."""
    with torch.inference_mode():
        encoder(images)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trunks", default=",".join(TRUNKS))
    parser.add_argument("--sizes", default="704x256,352x128", help="comma-separated WxH")
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--out-channels", type=int, default=256)
    parser.add_argument("--out-stride", type=int, default=16, choices=(8, 16))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    trunks = [t.strip() for t in args.trunks.split(",") if t.strip()]
    sizes = [_size(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    rows = []
    for trunk in trunks:
        encoder = ImageEncoder(trunk, out_channels=args.out_channels, out_stride=args.out_stride).eval()
        params = sum(p.numel() for p in encoder.parameters()) / 1e6
        cells = []
        for w, h in sizes:
            images = torch.randint(0, 256, (args.cams, 3, h, w), dtype=torch.uint8)  # [B*N, 3, H, W] with B = 1
            cells.append(time_forward(encoder, images, args.repeats) * 1e3)
        rows.append((trunk, params, cells))
        print(f"{trunk}: " + ", ".join(f"{c:.0f} ms" for c in cells), file=sys.stderr)

    print(f"\nImageEncoder forward on CPU ({torch.get_num_threads()} threads, torch {torch.__version__}), "
          f"{args.cams} images per forward, out_channels={args.out_channels}, out_stride={args.out_stride}, "
          f"median of {args.repeats} after 1 warm-up, ms:\n")
    head = ["trunk", "params (M)"] + [f"{args.cams}x3x{h}x{w}" for w, h in sizes]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|")
    for trunk, params, cells in rows:
        print(f"| {trunk} | {params:.1f} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
