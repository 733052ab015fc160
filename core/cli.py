"""The ``glnet`` command line.

Errors the user can fix print one line on stderr and exit with 1 (usage errors
with 2); a traceback is shown only with ``--debug``. With ``--progress json``
(a controlling process: the QGIS plugin), progress comes as JSON lines on
stderr, and train, segment and evaluate end their stdout with their result as
one JSON object line. These lines and the exit codes are ``glnet.contract``'s.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import __version__, contract
from .config import (
    BACKENDS,
    PRECISIONS,
    PRESETS,
    PROBABILITY_KINDS,
    QuantizeOptions,
    SegmentOptions,
    TrainConfig,
    TrainOptions,
    VectorizeOptions,
)
from .errors import GlnetError, OptionError
from .files import check_output_path
from .progress import KINDS as PROGRESS_KINDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glnet",
        description="GLNet land-cover segmentation for georeferenced rasters.")
    parser.add_argument("--version", action="version", version=f"glnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--progress", choices=PROGRESS_KINDS, default="auto",
                        help="how to show progress on stderr: a bar on a terminal (auto), "
                             "JSON lines for a controlling process, or nothing")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_info, _add_import_official, _add_train, _add_synth, _add_evaluate,
                _add_segment, _add_quantize, _add_vectorize):
        add(sub)
    return parser


def _add_quantize(sub) -> None:
    """The arguments of ``glnet quantize MODEL SCENE``, with the defaults of ``QuantizeOptions``."""
    d = QuantizeOptions()
    p = sub.add_parser(
        "quantize", help="make int8 branches of a model for --backend openvino --precision int8",
        description="Quantise the model's OpenVINO branches to int8, calibrated on windows of "
                    "SCENE (a raster like the model's training scene), and keep them beside the "
                    "model (MODEL.openvino/) if their classes agree with fp32's on enough pixels "
                    "of held-out windows. Needs glnet-qgis[int8].")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("scene", type=Path, help="raster to calibrate on (like the training scene)")
    p.add_argument("--windows", type=int, default=d.windows,
                   help=f"calibration windows (default {d.windows})")
    p.add_argument("--held-out", type=int, default=d.held_out,
                   help=f"further windows on which int8 is compared with fp32 (default "
                        f"{d.held_out})")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement,
                   help=f"share of held-out pixels whose class int8 must keep (default "
                        f"{d.min_agreement:g})")
    p.add_argument("--bands", type=_int_list, help="scene bands in the model's order, e.g. 1,2,3")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.set_defaults(run=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from .segment.quantize import quantize

    options = _options(QuantizeOptions, {"windows": "--windows", "held_out": "--held-out",
                                         "min_agreement": "--min-agreement",
                                         "threads": "--threads"},
                       windows=args.windows, held_out=args.held_out,
                       min_agreement=args.min_agreement,
                       bands=tuple(args.bands) if args.bands else None, threads=args.threads)
    report = _progress(args, "quantize")
    result = quantize(args.model, args.scene, options, progress=report)
    if hasattr(report, "close"):
        report.close()
    print(f"wrote {result.folder}: int8 branches ({', '.join(result.branches)}) keep the class "
          f"of {100 * result.agreement:.2f} % of {result.pixels} pixels of {result.held_out} "
          f"held-out window(s); segment with --backend openvino --precision int8")
    _print_result(args, result)
    return 0


def _add_info(sub) -> None:
    """The arguments of ``glnet info MODEL``."""
    p = sub.add_parser("info", help="print a model file's metadata",
                       description="Print a model file's metadata (classes, bands, sizes, stages).")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_info)


def _add_import_official(sub) -> None:
    """The arguments of ``glnet import-official G.pth G2L.pth [L2G.pth] -o MODEL``."""
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


def _add_train(sub) -> None:
    """The arguments of ``glnet train``, with the defaults of ``TrainOptions``."""
    p = sub.add_parser(
        "train", help="train GLNet on rasters with raster or vector labels",
        description="Train GLNet in three stages (global; global to local; local to global) on "
                    "image rasters with label rasters or polygons, or on a dataset folder "
                    "(DeepGlobe, LoveDA, Dubai). The best model by validation mIoU is written to -o; "
                    "a checkpoint MODEL.ckpt beside it allows --resume.")
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="image rasters")
    p.add_argument("--labels", nargs="+", type=Path, default=[], metavar="LABELS",
                   help="one label raster (class indices) or vector file per image")
    p.add_argument("--dataset", type=Path,
                   help="a DeepGlobe, LoveDA or Dubai dataset folder instead of IMAGEs")
    p.add_argument("--tiles", type=_int_list, metavar="N[,N...]",
                   help="with a Dubai --dataset: train on these tiles only (tile_N), e.g. 1,2,3")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--class-field", help="class field of vector labels (names or integers)")
    p.add_argument("--class-name", help="one class for all polygons (e.g. building)")
    p.add_argument("--classes", type=Path, help="JSON list of {value, name, color} classes")
    p.add_argument("--unlabelled", choices=("background", "ignore"), default="background",
                   help="pixels outside all label polygons: a 'background' class (default) or ignored")
    p.add_argument("--aoi", type=Path, help="polygons outside which pixels are ignored")
    p.add_argument("--bands", type=_int_list, help="image bands to use, e.g. 1,2,3")
    p.add_argument("--preset", default=TrainOptions.preset, choices=tuple(PRESETS),
                   help=f"network preset (default {TrainOptions.preset})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--window", type=int, help="context window in pixels (default: the preset's)")
    size.add_argument("--window-metres", type=float, help="context window in metres")
    p.add_argument("--patch", type=int, help="patch size in pixels")
    p.add_argument("--global-size", type=int, help="size the global branch sees the window at")
    p.add_argument("--stages", type=_int_list, default=list(TrainOptions.stages),
                   help=f"stages to run (default {','.join(map(str, TrainOptions.stages))})")
    p.add_argument("--epochs", type=_int_list, help="epochs per stage, e.g. 20,20,10")
    p.add_argument("--steps", type=_int_list,
                   help="optimiser steps per stage instead of epochs, e.g. 300,300,300 (one value: "
                        "every stage); the same steps give the same model on any machine")
    p.add_argument("--lr", type=_float_list, help="learning rate per stage, e.g. 1e-4,2e-5,5e-5")
    p.add_argument("--decoder-lr-factor", type=float,
                   help="learning rate of the decoders relative to the trunks' (default: 10 with "
                        "pretrained trunks, else 1)")
    p.add_argument("--coupling-weight", type=float,
                   help="weight of stage 2's weak coupling of the local to the global branch "
                        "(default: 0 with pretrained trunks, else the released 0.15)")
    p.add_argument("--windows-per-epoch", type=int, help="training windows per epoch")
    p.add_argument("--patches-per-window", type=int,
                   help="patches with a loss per window in stages 2 and 3 (default: all)")
    p.add_argument("--max-minutes", type=float, help="time budget for the whole run")
    p.add_argument("--val-fraction", type=float, default=TrainOptions.val_fraction,
                   help=f"right-hand share of each scene held out for validation (default "
                        f"{TrainOptions.val_fraction})")
    p.add_argument("--balance", action="store_true", help="favour windows with rare classes")
    p.add_argument("--backbone-weights", type=Path, help="local torchvision ResNet ImageNet weights")
    p.add_argument("--no-pretrained", action="store_true",
                   help="start the lite preset's trunks from random weights, not ImageNet's")
    p.add_argument("--seed", type=int, default=TrainOptions.seed,
                   help=f"random seed (default {TrainOptions.seed})")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--device", default=TrainOptions.device, help="cpu (default) or cuda")
    p.add_argument("--resume", action="store_true", help="continue from MODEL.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)


def _add_synth(sub) -> None:
    """The arguments of ``glnet synth OUT_DIR``."""
    p = sub.add_parser(
        "synth", help="a georeferenced synthetic landscape for tests and demos",
        description="Write a synthetic landscape to OUT_DIR: scene.tif (the image), labels.tif "
                    "(class values, nodata 255), labels.gpkg (the label polygons, layer "
                    "'labels') and classes.json. Agriculture and barren share their local "
                    "texture and differ only in large-scale shape; roads are 2-4 px lines. "
                    "The same seed gives the same pixels.")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created if missing)")
    p.add_argument("--size", type=int, default=4096, help="side of the scene in pixels (default 4096)")
    p.add_argument("--bands", type=int, default=3,
                   help="bands: 1 pan, 2 red+nir, 3 RGB (default), 4 RGB+NIR, 5-6 add SWIR")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--crs", default="EPSG:32633", help="CRS of the scene (default EPSG:32633)")
    p.add_argument("--resolution", type=float, default=0.5,
                   help="ground sampling distance in metres per pixel (default 0.5)")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8",
                   help="image data type (uint16: reflectance-like, 0-10000)")
    p.add_argument("--feature-size", type=float,
                   help="typical side of a field in pixels (default 900, less for small scenes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=_synth)


def _add_evaluate(sub) -> None:
    """The arguments of ``glnet evaluate``."""
    p = sub.add_parser(
        "evaluate", help="score a prediction, or a model, against reference labels",
        description="Score a class raster PRED against REF: a class raster (warped onto PRED's "
                    "grid with nearest neighbour if the grids differ) or polygons with a class "
                    "field (rasterised onto PRED's grid). Prints per-class IoU, F1, precision "
                    "and recall, mIoU, overall accuracy and the confusion matrix. Nodata in "
                    "either, and pixels outside the reference, are not counted. With -m MODEL, "
                    "the first argument is a SCENE that is segmented with the model first (as "
                    "glnet segment does, into a temporary mask); with -m MODEL --dataset FOLDER, "
                    "every scene of a DeepGlobe, LoveDA or Dubai folder is segmented and scored against "
                    "its labels.")
    p.add_argument("pred", type=Path, nargs="?", metavar="PRED",
                   help="prediction: a one-band class raster (with -m: the scene to segment)")
    p.add_argument("ref", type=Path, nargs="?", metavar="REF",
                   help="reference: a class raster or a vector file")
    p.add_argument("-m", "--model", type=Path, help="score this model: segment PRED (a scene) first")
    p.add_argument("--dataset", type=Path, metavar="FOLDER",
                   help="with -m: a DeepGlobe, LoveDA or Dubai folder to segment and score "
                        "instead of SCENE REF")
    p.add_argument("--tiles", type=_int_list, metavar="N[,N...]",
                   help="with a Dubai --dataset: score these tiles only (tile_N), e.g. 6,7")
    p.add_argument("--threads", type=int, help="with -m: CPU threads for segmenting")
    p.add_argument("--precision", choices=PRECISIONS,
                   help=f"with -m: precision of the network, as glnet segment's (default "
                        f"{SegmentOptions.precision})")
    p.add_argument("--ref-field", help="class field of vector references, values or names "
                                       "(default class_id, else class_name)")
    p.add_argument("--ref-layer", help="layer of a vector file with several layers")
    p.add_argument("--ignore-classes", type=_int_list, default=[], metavar="C[,C...]",
                   help="classes left out of mIoU and mean F1, e.g. 0")
    p.add_argument("--background", metavar="CLASS",
                   help="class (value or name) of pixels outside all reference polygons "
                        "(default: not counted)")
    p.add_argument("--block-size", type=int, default=1024, help="pixels per block side (default 1024)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=_evaluate, usage_error=p.error)


def _add_segment(sub) -> None:
    """The arguments of ``glnet segment``, with the defaults of ``SegmentOptions``."""
    p = sub.add_parser(
        "segment", help="segment a scene of any size into a land-cover mask",
        description="Segment SCENE with a GLNet model into a land-cover mask: a Cloud Optimized "
                    "GeoTIFF with one uint8 band of class values (nodata 255), a colour table and "
                    "the class names, on the scene's grid (same CRS and transform; an --extent or "
                    "--aoi crops it on whole pixels). The scene is streamed window by window, so "
                    "memory does not grow with its size. MASK.qml beside the mask gives QGIS the "
                    "legend. With several scenes, -o is a folder and each mask is "
                    "OUT_DIR/<scene name>.tif; --scheduler runs them, and strips of large "
                    "scenes, on a Dask cluster.")
    p.add_argument("scenes", nargs="+", metavar="SCENE",
                   help="input raster(s): paths, or GDAL virtual paths such as /vsicurl/URL")
    p.add_argument("-m", "--model", type=Path, required=True, help="model file")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MASK.tif",
                   help="mask to write (a COG), or an existing folder (OUT_DIR)")
    p.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="run on Dask distributed: a scheduler address (tcp://host:8786) or "
                        "local:N for a local cluster of N workers (needs glnet-qgis[distributed])")
    p.add_argument("--probabilities", type=Path, metavar="P.tif",
                   help="also write class probabilities in percent (a COG)")
    p.add_argument("--probability-kind", choices=PROBABILITY_KINDS,
                   default=SegmentOptions.probability_kind,
                   help="one band per class (default) or the winning class's probability only")
    p.add_argument("--polygons", type=Path, metavar="P.gpkg",
                   help="also vectorize the mask into polygons")
    p.add_argument("--bands", type=_int_list, help="scene bands in the model's order, e.g. 1,2,3")
    p.add_argument("--extent", type=_float_list, metavar="XMIN,YMIN,XMAX,YMAX",
                   help="work only inside this box (the scene's CRS)")
    p.add_argument("--aoi", type=Path, metavar="AOI.gpkg",
                   help="work only inside these polygons; outside is nodata")
    p.add_argument("--aoi-layer", help="layer of the --aoi file (default: its first)")
    p.add_argument("--device", default=SegmentOptions.device, help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--precision", choices=PRECISIONS, default=SegmentOptions.precision,
                   help=f"the network in fp32, or in bf16 (probabilities stay fp32); auto: bf16 "
                        f"where the CPU (avx512_bf16, amx_bf16) or GPU has it natively, else fp32 "
                        f"(default {SegmentOptions.precision}). bf16 elsewhere runs emulated, "
                        f"with a warning. int8: with --backend openvino, the int8 branches that "
                        f"glnet quantize made for the model")
    p.add_argument("--backend", choices=BACKENDS, default=SegmentOptions.backend,
                   help=f"runtime of the network: torch (default {SegmentOptions.backend}), or "
                        f"openvino on the CPU (needs glnet-qgis[openvino]; each model is "
                        f"converted once and kept in MODEL.openvino/ beside it)")
    p.add_argument("--batch", type=int, default=SegmentOptions.sub_batch,
                   help=f"patches per forward pass (default {SegmentOptions.sub_batch}; more is "
                        f"faster on a GPU)")
    p.add_argument("--window", type=int, help="context window in pixels (default: the model's)")
    p.add_argument("--overlap", type=int, help="least overlap of windows in pixels "
                                               "(default: the blend width, at most a quarter "
                                               "window)")
    p.add_argument("--blend", type=int, default=SegmentOptions.blend,
                   help=f"width in pixels of the smooth hand-over between windows (default "
                        f"{SegmentOptions.blend})")
    p.add_argument("--mode", type=int, choices=(1, 2, 3),
                   help="1 global branch only, 2 global to local, 3 also local to global "
                        "(default: the fullest the model supports)")
    p.add_argument("--refine", choices=("all", "confidence", "bbox", "bbox+confidence"),
                   default=SegmentOptions.refine,
                   help=f"coarse to fine: refine only some patches with the local branch "
                        f"(default {SegmentOptions.refine})")
    p.add_argument("--refine-threshold", type=float, default=SegmentOptions.confidence,
                   help=f"skip patches whose global confidence is at least this (default "
                        f"{SegmentOptions.confidence})")
    resample = p.add_mutually_exclusive_group()
    resample.add_argument("--no-resample", action="store_true",
                          help="do not resample scenes whose resolution differs from the model's")
    resample.add_argument("--resolution", type=float, metavar="M",
                          help="resample the scene to M metres per pixel instead of the model's "
                               "resolution")
    p.add_argument("--force-resample", action="store_true",
                   help="resample even by more than 4x either way (refused otherwise: such a "
                        "job can take hours or days)")
    p.add_argument("--no-overviews", action="store_true", help="write the COG without overviews")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run on the same output (same model, scene and "
                        "options) from the strips of rows it finished; without it, what a "
                        "killed run left beside the output is removed")
    p.set_defaults(run=_segment)


def _add_vectorize(sub) -> None:
    """The arguments of ``glnet vectorize``, with the defaults of ``VectorizeOptions``."""
    p = sub.add_parser(
        "vectorize", help="turn a land-cover mask into polygons",
        description="Turn a class raster (the mask of glnet segment, or any single-band integer "
                    "raster) into polygons with class_id, class_name, area_m2 and perimeter_m: "
                    "optionally sieved and simplified so that neighbours still share their "
                    "edges. The mask is read in strips, so memory does not grow with its size. "
                    "A GeoPackage also carries the class colours as the style QGIS applies on "
                    "load. Without a CRS the polygons stay in pixel units, areas are left empty.")
    p.add_argument("mask", type=Path, metavar="MASK", help="class raster")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="POLYGONS.gpkg",
                   help="vector file to write (.gpkg, .shp, .geojson, .fgb)")
    sieve = p.add_mutually_exclusive_group()
    sieve.add_argument("--min-area", type=float, metavar="M2",
                       help="merge regions smaller than this many square metres into their "
                            "largest neighbour")
    sieve.add_argument("--min-pixels", type=int, metavar="N",
                       help="merge regions of fewer than N pixels into their largest neighbour")
    p.add_argument("--simplify", type=float, default=VectorizeOptions.simplify, metavar="M",
                   help="simplify shared edges with this tolerance in metres (0: pixel outlines)")
    p.add_argument("--smooth", type=int, default=VectorizeOptions.smooth, metavar="N",
                   help=f"Chaikin smoothing iterations of shared edges (0 to 5, default "
                        f"{VectorizeOptions.smooth})")
    p.add_argument("--classes", type=_int_list, metavar="1,2",
                   help="write only polygons of these class values")
    p.add_argument("--block-size", type=int, default=VectorizeOptions.block_size, metavar="ROWS",
                   help=f"rows per strip (default {VectorizeOptions.block_size}; 0 reads the whole "
                        f"mask at once)")
    p.add_argument("--format", choices=("GPKG", "ESRI Shapefile", "GeoJSON", "FlatGeobuf"),
                   help="output format (default: from the extension)")
    p.add_argument("--layer", help="layer name (default: the output file's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=_vectorize)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with _command_settings(args):
        return _run(args)


@contextmanager
def _command_settings(args: argparse.Namespace) -> Iterator[None]:
    """The process-wide settings a command runs with, put back when it returns.

    A process that calls ``main`` (the tests, a script) keeps its own
    warnings, log handlers and SIGTERM handler.
    """
    handlers = []
    with warnings.catch_warnings():
        if not args.debug:
            # GDAL's messages reach Python's last-resort log handler as bare lines
            # (a full disk gives dozens of "_tiffWriteProc: ..."); the error they
            # end in is reported once, by _run.
            for name in ("rasterio", "fiona"):
                handler = logging.NullHandler()
                logging.getLogger(name).addHandler(handler)
                handlers.append((name, handler))
            _one_line_warnings(args.command)
        # A controlling process (the QGIS plugin) stops us with SIGTERM: unwind like
        # Ctrl+C so that temporary outputs are removed.
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
            for name, handler in handlers:
                logging.getLogger(name).removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    """Run the command; errors become one line on stderr and an exit status."""
    try:
        return args.run(args) or contract.EXIT_OK
    except GlnetError as exc:
        if args.debug:
            raise
        print(contract.error_line(args.command, exc), file=sys.stderr)
        return contract.EXIT_ERROR
    except KeyboardInterrupt:
        print(contract.cancelled_line(args.command), file=sys.stderr)
        return contract.EXIT_CANCELLED
    except BrokenPipeError:
        # The reader went away (`glnet ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return contract.EXIT_OK
    except OSError as exc:
        # A file the engine did not wrap (an unexpected read, a full disk in a
        # library's own words): name the file, on one line.
        if args.debug:
            raise
        path = exc.filename or _destination(args)
        what = "no space left on device" if exc.errno == errno.ENOSPC else \
            (exc.strerror or str(exc) or type(exc).__name__)
        print(contract.error_line(args.command, f"{path}: {' '.join(what.split())}"),
              file=sys.stderr)
        return contract.EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        text = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever GDAL says
        if len(text) > 300:
            text = text[:300] + " ..."
        print(contract.internal_error_line(args.command, text), file=sys.stderr)
        return contract.EXIT_ERROR


def _destination(args: argparse.Namespace) -> Path | str:
    """The output the command was writing, to name in an error that names no file."""
    return getattr(args, "output", None) or getattr(args, "out_dir", None) or "glnet"


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _options(cls, flags: dict[str, str], **values):
    """``cls(**values)``, where an ``OptionError`` about a field in ``flags`` names its flag.

    The options dataclasses check their values themselves and name their
    fields; the user of the command line knows the flags (``--stages``).
    """
    try:
        return cls(**values)
    except OptionError as exc:
        flag = flags.get(exc.option)
        if flag is None:
            raise
        raise OptionError(flag + str(exc)[len(exc.option):]) from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    from .raster.labels import read_classes_json
    from .train.datasets import scenes_from_folder, scenes_from_pairs
    from .train.training import checkpoint_path, train

    if args.tiles is not None and not args.dataset:
        raise GlnetError("--tiles applies with --dataset FOLDER only")
    if args.dataset and (args.images or args.labels):
        raise GlnetError("give either IMAGE files with --labels, or --dataset, not both")
    if not args.dataset and not args.images:
        raise GlnetError("no training data: give IMAGE files with --labels, or --dataset FOLDER")
    if not args.resume:
        check_output_path(args.output, args.overwrite, inputs=[*args.images, *args.labels])
    elif not checkpoint_path(args.output).exists():
        raise GlnetError(f"{checkpoint_path(args.output)}: no checkpoint to resume from")
    stages = tuple(args.stages)
    per_stage = {}
    for name, values in (("epochs", args.epochs), ("lr", args.lr), ("steps", args.steps)):
        if values is not None and len(values) not in (1, len(stages)):
            raise GlnetError(f"--{name} needs one value or one per stage ({len(stages)})")
        per_stage[name] = ({s: values[i if len(values) > 1 else 0] for i, s in enumerate(stages)}
                           if values else {})
    options = _options(
        TrainOptions, {"stages": "--stages"},
        preset=args.preset, window_size=args.window, window_metres=args.window_metres,
        patch_size=args.patch, global_size=args.global_size, stages=stages,
        epochs=per_stage["epochs"], lr=per_stage["lr"], steps=per_stage["steps"],
        pretrained=False if args.no_pretrained else None, windows_per_epoch=args.windows_per_epoch,
        decoder_lr_factor=args.decoder_lr_factor, coupling_weight=args.coupling_weight,
        max_minutes=args.max_minutes, val_fraction=args.val_fraction, balance=args.balance,
        seed=args.seed, backbone_weights=str(args.backbone_weights) if args.backbone_weights else None,
        threads=args.threads, device=args.device, loss=TrainConfig(patches_per_window=args.patches_per_window))

    classes = read_classes_json(args.classes) if args.classes else None
    if args.dataset:
        scenes, classes = scenes_from_folder(args.dataset, bands=args.bands, tiles=args.tiles)
    else:
        scenes, classes = scenes_from_pairs(
            args.images, args.labels, class_field=args.class_field, class_name=args.class_name,
            classes=classes, background="background" if args.unlabelled == "background" else None,
            aoi=args.aoi, bands=args.bands)

    report = _progress(args, "training")
    result = train(scenes, classes, args.output, options, resume=args.resume,
                   log=lambda text: _log(report, text), progress=report)
    if int(os.environ.get("RANK", "0") or 0) > 0:
        return 0  # under torchrun, rank 0 reports
    score = f"validation mIoU {result.best_miou:.4f} (stage {result.best_stage})" \
        if result.best_miou is not None else "no validation"
    print(f"wrote {args.output}: stages {', '.join(map(str, result.stages_done))}, {score}, "
          f"{result.minutes:.1f} min")
    _print_result(args, result, steps=sum(r.get("steps", 0) for r in result.history))
    return 0


def _print_result(args: argparse.Namespace, result, **extra) -> None:
    """With --progress json, the result as the last stdout line (``contract.result_line``)."""
    if args.progress == "json":
        print(contract.result_line(result, **extra), flush=True)


def _progress(args: argparse.Namespace, desc: str):
    """The progress function the user asked for with --progress (and --quiet)."""
    from . import progress

    kind = "none" if getattr(args, "quiet", False) and args.progress == "auto" else args.progress
    return progress.make(kind, desc)


def _log(report, text: str) -> None:
    """A log line: a JSON message in --progress json, else a plain line on stderr."""
    from .progress import Bar, JsonLines

    if isinstance(report, (JsonLines, Bar)):
        report(getattr(report, "last", 0.0) if isinstance(report, JsonLines) else 0.0, text)
    else:
        print(text, file=sys.stderr, flush=True)


def _synth(args: argparse.Namespace) -> int:
    from .synth import synth

    report = _progress(args, "synth")
    result = synth(args.out_dir, size=args.size, bands=args.bands, seed=args.seed, crs=args.crs,
                   resolution=args.resolution, dtype=args.dtype, feature_size=args.feature_size,
                   overwrite=args.overwrite, progress=report)
    if hasattr(report, "close"):
        report.close()
    shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in result.class_fractions.items())
    print(f"wrote {args.out_dir}: {result.width} x {result.height} px, {len(result.bands)} band(s) "
          f"({', '.join(result.bands)}), {result.polygon_count} label polygons; {shares}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate.mask import evaluate
    from .evaluate.model import evaluate_model, evaluate_model_on_dataset

    given = [a for a in (args.pred, args.ref) if a is not None]
    if args.dataset is not None:
        if args.model is None:
            args.usage_error("--dataset needs a model to score: add -m MODEL")
        if given or args.ref_field or args.ref_layer or args.background is not None:
            args.usage_error("with --dataset, give no SCENE or REF (nor --ref-field, --ref-layer, "
                             "--background): the folder's labels are the reference")
    elif len(given) != 2:
        args.usage_error("give PRED and REF" if args.model is None else
                         "give SCENE and REF to segment and score (or --dataset FOLDER)")
    if args.threads is not None and args.model is None:
        args.usage_error("--threads applies with -m MODEL only")
    if args.precision is not None and args.model is None:
        args.usage_error("--precision applies with -m MODEL only")
    if args.tiles is not None and args.dataset is None:
        args.usage_error("--tiles applies with --dataset FOLDER only")
    report = _progress(args, "evaluate")
    if args.model is not None:
        options = SegmentOptions(threads=args.threads,
                                 precision=args.precision or SegmentOptions.precision)
        if args.dataset is not None:
            result = evaluate_model_on_dataset(
                args.model, args.dataset, ignore_classes=args.ignore_classes, tiles=args.tiles,
                block_size=args.block_size, segment_options=options, progress=report)
        else:
            result = evaluate_model(
                args.model, args.pred, args.ref, ref_field=args.ref_field,
                ref_layer=args.ref_layer, ignore_classes=args.ignore_classes,
                background=args.background, block_size=args.block_size,
                segment_options=options, progress=report)
    else:
        result = evaluate(args.pred, args.ref, ref_field=args.ref_field, ref_layer=args.ref_layer,
                          ignore_classes=args.ignore_classes, background=args.background,
                          block_size=args.block_size, progress=report)
    if hasattr(report, "close"):
        report.close()
    print(result.to_json() if args.json else result.format())
    if not args.json:  # --json printed the same object already
        _print_result(args, result.to_dict())
    return 0


def _one_line_warnings(command: str) -> None:
    """Python warnings as ``glnet COMMAND: warning: TEXT`` lines, not file:line blocks.

    rasterio's NotGeoreferencedWarning is dropped: segment and vectorize say
    themselves, once, what a raster without georeferencing means for the output.
    Call it inside ``warnings.catch_warnings()`` (``_command_settings``).
    """
    warnings.filterwarnings("ignore", message=r"(Dataset has no geotransform|The given matrix "
                                              r"is equal to Affine\.identity)")

    def show(message, category, filename, lineno, file=None, line=None):
        print(contract.warning_line(command, " ".join(str(message).split())),
              file=file or sys.stderr, flush=True)

    warnings.showwarning = show


def _stderr(report, text: str) -> None:
    """A line on stderr, above a progress bar (a controlling process shows a warning as one)."""
    from .progress import Bar

    if isinstance(report, Bar):
        report.bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def _segment(args: argparse.Namespace) -> int:
    from .modelfile import read_metadata
    from .progress import JsonLines
    from .segment.plan import describe_plan, plan_job, source_path
    from .segment.scene import segment

    scenes = [source_path(s) for s in args.scenes]
    several = len(scenes) > 1 or args.scheduler is not None or args.output.is_dir()
    if several:
        from .segment.distributed import output_paths

        if len(scenes) > 1 and (args.polygons or args.probabilities):
            raise GlnetError("--polygons and --probabilities take one scene at a time")
        outputs = output_paths(scenes, args.output)
    else:
        outputs = [args.output]
    vectorize = None
    if args.polygons is not None:
        from .vectorize.polygons import vectorize

        check_output_path(args.polygons, args.overwrite,
                          inputs=[*scenes, args.model, outputs[0]])
    options = _options(
        SegmentOptions, {"extent": "--extent"},
        bands=tuple(args.bands) if args.bands else None,
        extent=tuple(args.extent) if args.extent is not None else None, aoi=args.aoi,
        aoi_layer=args.aoi_layer, probabilities=args.probabilities,
        probability_kind=args.probability_kind, window_size=args.window, overlap=args.overlap,
        blend=args.blend, mode=args.mode, refine=args.refine, confidence=args.refine_threshold,
        resample=not args.no_resample, resolution=args.resolution,
        force_resample=args.force_resample, device=args.device, precision=args.precision,
        backend=args.backend, threads=args.threads, sub_batch=args.batch, overwrite=args.overwrite, overviews=not args.no_overviews,
        resume=args.resume)
    if args.resume and args.scheduler is not None:
        raise GlnetError("--resume is for runs in one process, not with --scheduler")
    # Every scene is planned, and its plan and warnings shown, before any window is computed.
    meta = read_metadata(args.model)
    jobs = [plan_job(scene, meta, output, options, args.model)
            for scene, output in zip(scenes, outputs)]
    report = _progress(args, "segment")

    def show_plans() -> None:
        for job in jobs:
            name = f"{os.path.basename(os.fspath(job.scene))}: " if len(jobs) > 1 else ""
            plan = f"plan: {name}{describe_plan(job)[len('plan: '):]}"
            if isinstance(report, JsonLines):
                report(0.0, plan)  # a message, which the QGIS plugin logs
            else:
                _stderr(report, plan)
            for text in job.plan.warnings:
                _stderr(report, contract.warning_line("segment", f"{name}{text}"))

    try:
        if args.scheduler is not None:
            from .segment.distributed import connect, segment_scenes

            with connect(args.scheduler, threads_per_worker=args.threads or 1) as client:
                show_plans()
                results = segment_scenes(scenes, args.model, outputs, options, client,
                                         progress=report)
        else:
            show_plans()
            results = []
            for i, (scene, output) in enumerate(zip(scenes, outputs)):
                def part(fraction, message=None, _i=i):
                    report((_i + fraction) / len(scenes), *([message] if message else []))
                results.append(segment(scene, args.model, output, options, progress=part))
    finally:
        if hasattr(report, "close"):
            report.close()
    for result, job in zip(results, jobs):
        for text in result.warnings:
            if text not in job.plan.warnings:  # shown before the work
                print(contract.warning_line("segment", text), file=sys.stderr)
        total = max(result.valid_pixels, 1)
        shares = ", ".join(f"{name} {100 * n / total:.1f}%"
                           for name, n in result.class_pixels.items())
        skipped = f", {result.skipped} without data skipped" if result.skipped else ""
        reused = (f", {result.strips_reused} of {result.strips} strips reused"
                  if result.strips_reused else "")
        print(f"wrote {result.output}: {result.width} x {result.height} px, {result.windows} "
              f"window(s){skipped}{reused}, {result.seconds:.1f} s; {shares}")
    if args.probabilities is not None:
        kind = "per-class probabilities" if args.probability_kind == "classes" else "confidence"
        print(f"wrote {args.probabilities}: {kind} in percent")
    vectorized = None
    if vectorize is not None:
        from .vectorize.polygons import summary

        vectorized = vectorize(outputs[0], args.polygons,
                               VectorizeOptions(overwrite=args.overwrite))
        print(summary(vectorized))
    _print_result(args, {"results": results, "polygons": vectorized})
    return 0


def _vectorize(args: argparse.Namespace) -> int:
    from .vectorize.polygons import summary, vectorize

    options = VectorizeOptions(
        min_area=args.min_area, min_pixels=args.min_pixels, simplify=args.simplify,
        smooth=args.smooth, class_ids=tuple(args.classes) if args.classes else None,
        block_size=args.block_size,
        driver=args.format, layer=args.layer, overwrite=args.overwrite)
    report = _progress(args, "vectorize")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *rest, **kw: _log(
                report, contract.warning_line("vectorize", message))
            result = vectorize(args.mask, args.output, options, progress=report)
    finally:
        if hasattr(report, "close"):
            report.close()
    print(summary(result))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .modelfile import check_model_file, describe

    meta, _ = check_model_file(args.model)
    if args.json:
        print(meta.to_json())
    else:
        print(describe(meta, args.model))
    return 0


def _import_official(args: argparse.Namespace) -> int:
    from .modelfile import save_model
    from .nn.official import deepglobe_meta, load_checkpoint, model_from_official

    check_output_path(args.output, args.overwrite, inputs=[args.g, args.g2l, args.l2g])
    states = [load_checkpoint(p) if p is not None else None for p in (args.g, args.g2l, args.l2g)]
    source = ", ".join(str(p) for p in (args.g, args.g2l, args.l2g) if p is not None)
    model, stages = model_from_official(*states, source=source)
    del states
    save_model(model, deepglobe_meta(model.cfg, stages), args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}: official GLNet, DeepGlobe classes, stages {', '.join(map(str, stages))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
