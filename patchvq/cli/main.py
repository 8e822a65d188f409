"""`patchvq` command line: train, test, predict, export, demo, info.

Every failure the user can cause (a bad path, option, config or a corrupt file) ends in one
line on stderr, `patchvq: error: ...`, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from patchvq.models import presets
from patchvq.models.config import BACKBONES, MODELS

FORMATS = ("auto", "mvtec", "btad", "mtsd", "folder")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, else an error naming what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


_positive = _integer_at_least(1, "positive")
_non_negative = _integer_at_least(0, "non-negative")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="patchvq", description="Unsupervised visual defect detection with patch-aware VQ (PVQAE).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a detector on the good training images of a dataset")
    train.add_argument("data", help="dataset folder (MVTec AD category, BTAD product, MTSD, or a plain folder)")
    train.add_argument("--out", required=True, help="run folder to create (must not hold a run unless --resume)")
    train.add_argument("--format", choices=FORMATS, default="auto", help="dataset layout (default: recognise it)")
    train.add_argument("--model", choices=MODELS, help="pvqae (default), or a baseline: vqvae, ae, knn")
    train.add_argument("--backbone", choices=BACKBONES, help="feature backbone (default efficientnet-lite0); none = pixels")
    train.add_argument("--epochs", type=_non_negative, help="autoencoder training epochs (default 12)")
    train.add_argument("--image-size", type=_positive, help="images are resized to this square size (default 256)")
    train.add_argument("--config", help="JSON file of settings (see `patchvq.models.Config`), or the name of a shipped "
                       f"preset ({', '.join(presets.names())}); options above override it")
    train.add_argument("--seed", type=_non_negative, help="random seed (default 0): same data and seed, same model")
    train.add_argument("--batch-size", type=_positive,
                       help="images per training step (default 16); under torchrun the global batch, split across "
                            "the processes")
    train.add_argument("--cache", action="store_true", default=None,
                       help="keep everything in memory: the decoded images (all read up front) and the backbone "
                            "features whatever their size; by default images are read from disk as needed and "
                            "features past feature_cache_mb go to memory-mapped files in the run folder")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its checkpoint")
    train.add_argument("--device", help="torch device (default: cuda when available, else cpu); under torchrun "
                       "each process takes cuda:LOCAL_RANK, or give cpu for gloo")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    test = commands.add_parser("test", help="score a dataset's test images with a run and report the metrics")
    test.add_argument("data", help="dataset folder with a test split")
    test.add_argument("--run", required=True, help="run folder written by `patchvq train`")
    test.add_argument("--report", help="folder for an HTML report (index.html), metrics.json and the per-image scores "
                      "(default: metrics and scores only, in the run folder)")
    test.add_argument("--format", choices=FORMATS, default="auto", help="dataset layout (default: recognise it)")
    test.add_argument("--batch-size", type=_positive, default=8, help="images per batch (default 8)")
    test.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    test.add_argument("--quiet", action="store_true", help="no progress bars")

    predict = commands.add_parser("predict", help="score images: a CSV of verdicts and one heat-map overlay per image")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `patchvq train`")
    source.add_argument("--onnx", help="a model written by `patchvq export` (scored with onnxruntime alone)")
    predict.add_argument("--out", required=True, help="output folder for predictions.csv and the overlays")
    predict.add_argument("--batch-size", type=_positive, default=8, help="images per batch (default 8)")
    predict.add_argument("--device", help="torch device (default: cuda when available, else cpu)")

    export = commands.add_parser("export", help="export a run's scoring model (image in, score and heat map out) to ONNX")
    export.add_argument("--run", required=True, help="run folder written by `patchvq train`")
    export.add_argument("--onnx", required=True, help="ONNX file to write (only when it matches PyTorch)")
    export.add_argument("--images", help="folder of images to check the export on (default: synthetic images)")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest map difference allowed, relative to the map's range (default 1e-4)")

    demo = commands.add_parser("demo", help="generate the synthetic dataset, train pvqae on it, test it")
    demo.add_argument("--out", default="patchvq-demo", help="output folder (default ./patchvq-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    info = commands.add_parser("info", help="versions, compiler, SIMD, CUDA, Triton and each op's backend")
    info.add_argument("--no-build", action="store_true", help="do not build the kernels to report on them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from patchvq.cli import commands

    try:
        return getattr(commands, args.command)(args)
    except KeyboardInterrupt:
        print("patchvq: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the face turns every failure into one line
        print(f"patchvq: error: {commands.describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
