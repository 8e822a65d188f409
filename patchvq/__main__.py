"""Command line: `python -m patchvq info` (more commands arrive with the application)."""

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patchvq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info_cmd = commands.add_parser("info", help="versions, compiler, SIMD, CUDA, Triton and each op's backend")
    info_cmd.add_argument("--no-build", action="store_true", help="do not build the kernels to report on them")
    args = parser.parse_args(argv)
    if args.command == "info":
        from patchvq import info

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = info.format_info(info.collect(build=not args.no_build))
        print(text)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
