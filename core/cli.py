"""The ``glnet`` command line.

Errors the user can fix print one line on stderr and exit with 1 (usage errors
with 2); a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import GlnetError

# Commands that later releases fill in, with the issue that brings them.
PLANNED = {
    "synth": "a georeferenced synthetic landscape for tests and demos",
    "train": "train GLNet on rasters with raster or vector labels",
    "segment": "segment a scene of any size into a land-cover mask",
    "vectorize": "turn a land-cover mask into polygons",
    "evaluate": "score a prediction against reference labels",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glnet",
        description="GLNet land-cover segmentation for georeferenced rasters.")
    parser.add_argument("--version", action="version", version=f"glnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="print a model file's metadata",
                       description="Print a model file's metadata (classes, bands, sizes, stages).")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_info)

    p = sub.add_parser(
        "import-official", help="convert the released GLNet DeepGlobe checkpoints",
        description="Convert the released GLNet checkpoints (G.pth after stage 1, G2L.pth after "
                    "stage 2, optionally L2G.pth after stage 3) into a model file with "
                    "DeepGlobe's seven classes.")
    p.add_argument("g", type=Path, metavar="G.pth", help="stage-1 checkpoint (global branch)")
    p.add_argument("g2l", type=Path, metavar="G2L.pth", help="stage-2 checkpoint (global to local)")
    p.add_argument("l2g", type=Path, metavar="L2G.pth", nargs="?", help="stage-3 checkpoint (local to global)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=_import_official)

    for name, text in PLANNED.items():
        p = sub.add_parser(name, help=f"{text} (not in this version yet)",
                           description=f"{text[0].upper()}{text[1:]}. Not in this version yet.")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(run=_planned)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except GlnetError as exc:
        if args.debug:
            raise
        print(f"glnet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"glnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"glnet {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _planned(args: argparse.Namespace) -> int:
    raise GlnetError(f"'glnet {args.command}' is not available in glnet {__version__} yet")


def _info(args: argparse.Namespace) -> int:
    from .modelfile import describe, read_metadata

    meta = read_metadata(args.model)
    if args.json:
        print(meta.to_json())
    else:
        print(describe(meta, args.model))
    return 0


def _import_official(args: argparse.Namespace) -> int:
    from .modelfile import check_output_path, save_model
    from .official import deepglobe_meta, load_checkpoint, model_from_official

    check_output_path(args.output, args.overwrite, inputs=[args.g, args.g2l, args.l2g])
    states = [load_checkpoint(p) if p is not None else None for p in (args.g, args.g2l, args.l2g)]
    source = ", ".join(str(p) for p in (args.g, args.g2l, args.l2g) if p is not None)
    model, stages = model_from_official(*states, source=source)
    del states
    save_model(model, deepglobe_meta(model.cfg, stages), args.output)
    print(f"wrote {args.output}: official GLNet, DeepGlobe classes, stages {', '.join(map(str, stages))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
