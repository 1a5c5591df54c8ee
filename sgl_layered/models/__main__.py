"""`python -m sgl_layered.models build NAME` builds an embedded model and prints its path;
`python -m sgl_layered.models train NAME` trains a trained preset (see train.py) and prints its path."""

import argparse

from . import PRESETS, build
from .build import NotTrainedError


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m sgl_layered.models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build an embedded model into the cache and print its directory")
    b.add_argument("name", choices=sorted(PRESETS))
    b.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    trained = sorted(n for n, p in PRESETS.items() if "train" in p.extra)
    t = sub.add_parser("train", help="train a trained preset on its corpus into the cache and print its directory")
    t.add_argument("name", choices=trained)
    t.add_argument("--force", action="store_true", help="retrain even if a finished training exists")
    t.add_argument("--steps", type=int, default=None,
                   help="override the recipe's step count (development; cached apart from the preset's checkpoint)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; on a machine shared with other jobs 1 is faster)")
    sub.add_parser("list", help="list the embedded presets")
    args = ap.parse_args()
    if args.cmd == "list":
        for name, p in sorted(PRESETS.items()):
            kind = ", trained (python -m sgl_layered.models train)" if "train" in p.extra else ""
            print(f"{name}: {p.architecture}, {p.num_layers} layers, {p.num_experts} experts top-{p.top_k}{kind}")
    elif args.cmd == "train":
        import torch

        from .train import train

        if args.threads:
            torch.set_num_threads(args.threads)
        print(train(args.name, steps=args.steps, force=args.force))
    else:
        try:
            print(build(args.name, force=args.force))
        except NotTrainedError as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
