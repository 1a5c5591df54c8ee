"""`python -m sgl_layered.models build NAME` builds an embedded model and prints its path."""

import argparse

from . import PRESETS, build


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m sgl_layered.models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build an embedded model into the cache and print its directory")
    b.add_argument("name", choices=sorted(PRESETS))
    b.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    sub.add_parser("list", help="list the embedded presets")
    args = ap.parse_args()
    if args.cmd == "list":
        for name, p in sorted(PRESETS.items()):
            print(f"{name}: {p.architecture}, {p.num_layers} layers, {p.num_experts} experts top-{p.top_k}")
    else:
        print(build(args.name, force=args.force))


if __name__ == "__main__":
    main()
