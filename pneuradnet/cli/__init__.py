"""The `pneuradnet` command: classify image files, score a labelled folder, describe the active model, or
classify image files with a running service (`submit`).

Exit status: 0 when every image was classified, 1 when some image failed (or `info`'s self-check did),
2 for a usage, library or service error (bad manifest, missing model file, service unreachable, ...),
reported on one line of stderr.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pneuradnet import __version__
from pneuradnet.classifier import DEFAULT_MAX_BATCH
from pneuradnet.cli import local, submit
from pneuradnet.cli.common import Exit, UsageError, positive_int
from pneuradnet.errors import PneuradnetError
from pneuradnet.manifest import MODEL_CACHE_DIR
from pneuradnet.runtimes import RUNTIMES

TF_CPP_MIN_LOG_LEVEL = "2"
"""Hides TensorFlow's C++ INFO and WARNING start-up lines, unless the user set the variable themselves."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything imports TensorFlow (it is imported when a model loads).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    try:
        return int(args.run(args))
    except (PneuradnetError, UsageError) as error:
        print(f"pneuradnet: error: {_one_line(error)}", file=sys.stderr)
        return int(Exit.ERROR)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`pneuradnet predict ... | head`): stop quietly, and point stdout at
        # devnull so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(Exit.SOME_FAILED)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", default="default", metavar="NAME_OR_PATH",
                        help="a shipped manifest's name or a manifest JSON file (default: %(default)s)")
    common.add_argument("--model-path", type=Path, metavar="PATH",
                        help="model file to load instead of the one the manifest names")
    common.add_argument("--batch-size", type=positive_int, default=DEFAULT_MAX_BATCH, metavar="N",
                        help="images per forward pass, and per chunk read from disk (default: %(default)s)")
    common.add_argument("--runtime", choices=RUNTIMES, default="tensorflow",
                        help="inference runtime: tensorflow, the reference, or onnxruntime, which serves the "
                             "model's verified ONNX conversion (default: %(default)s)")
    common.add_argument("--cache-dir", type=Path, default=MODEL_CACHE_DIR, metavar="DIR",
                        help="where converted models are kept (default: %(default)s)")

    parser = argparse.ArgumentParser(
        prog="pneuradnet",
        description="Chest radiograph pneumonia classifier. Decision support, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", parents=[common], help="classify image files",
        description="Classify PNG/JPEG/DICOM files; folders are searched recursively. One JSON line per image, "
                    "or CSV with --csv. Exit status 1 if any image could not be classified.",
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    predict.add_argument("--csv", action="store_true", help="write CSV instead of JSON lines")
    predict.set_defaults(run=local.run_predict)

    score = commands.add_parser(
        "evaluate", parents=[common], help="score the model on a folder of labelled images",
        description="Score the model on DIR, whose subfolders are named after the model's labels "
                    "(in any case) and hold that label's images; or, with --labels, on the images of DIR that a "
                    "labels file names.",
    )
    score.add_argument("folder", type=Path, metavar="DIR")
    score.add_argument("--labels", type=Path, metavar="CSV",
                       help="a CSV file with the header `file,label`: each image's path relative to DIR and its "
                            "true label (in any case); for a flat folder")
    score.add_argument("--json", action="store_true", help="write the scores as JSON")
    score.set_defaults(run=local.run_evaluate)

    info = commands.add_parser(
        "info", parents=[common], help="describe the active model and check that it runs",
        description="Show the manifest, the model file and its SHA-256, and classify a synthetic gray image.",
    )
    info.add_argument("--json", action="store_true", help="write the description as JSON")
    info.set_defaults(run=local.run_info)

    convert = commands.add_parser(
        "convert", parents=[common], help="convert the model to ONNX once, verified against TensorFlow",
        description="Convert the model file to ONNX into --cache-dir (if not there already), and check that the "
                    "converted model's outputs equal TensorFlow's within 1e-5 on the images given with --check "
                    "(noise inputs without them). Workers serving with onnxruntime then start without converting.",
    )
    convert.add_argument("--check", nargs="+", type=Path, default=[], metavar="PATH",
                         help="images or folders to verify the conversion on (real radiographs where available)")
    convert.set_defaults(run=local.run_convert)

    remote = commands.add_parser(
        "submit", help="classify image files with a running service",
        description="Upload image files (as `predict` finds them; folders are searched recursively) to the "
                    "service at --api, in chunks; "
                    "with --wait or --out, wait for every result and write one row per image. Rerun the same "
                    "command to resume an interrupted run: chunks already accepted are not uploaded again. "
                    "Images already in a bucket the service may read (its IMAGE_SOURCES) are named instead: "
                    "s3://bucket/key for one, s3://bucket/folder/ for every object under it; nothing is uploaded. "
                    "Exit status 1 if any image failed.",
    )
    remote.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder, or an s3:// location")
    remote.add_argument("--api", required=True, type=submit.http_url, metavar="URL",
                        help="the service, e.g. http://127.0.0.1:8000")
    remote.add_argument("--key", metavar="KEY",
                        help=f"API key, if the service needs one (default: ${submit.API_KEY_ENV})")
    remote.add_argument("--out", type=Path, metavar="FILE",
                        help=f"write the results to FILE, CSV (.csv) or JSON lines (.jsonl); implies --wait; "
                             f"progress is kept in FILE{submit.STATE_SUFFIX} for a rerun")
    remote.add_argument("--wait", action="store_true",
                        help="wait for the results and write them (as JSON lines on stdout without --out); "
                             "without it, print the batch ids")
    remote.add_argument("--chunk-size", type=positive_int, default=submit.DEFAULT_CHUNK_FILES, metavar="N",
                        help="most images per request (default: %(default)s)")
    remote.add_argument("--chunk-bytes", type=positive_int, default=submit.DEFAULT_CHUNK_BYTES, metavar="BYTES",
                        help="most bytes of images per request; a larger image goes alone (default: %(default)s)")
    remote.set_defaults(run=submit.run_submit)
    return parser


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
