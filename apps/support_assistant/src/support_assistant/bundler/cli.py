"""`support-assistant-bundle`: build and verify model bundles.

    support-assistant-bundle build --out DIR [--profile local|production] [--corpus DIR]
                                   [--models images/models.yaml]
    support-assistant-bundle verify DIR

Failures print one line naming the file or field at fault and exit 2 (no traceback: this runs
in CI and init containers, where the first line of the log is what people read).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from support_assistant.runtime.bundle import Bundle, BundleError, load_bundle

# "test" bundles carry a test's own tiny decoder and are built by the tests themselves.
CLI_PROFILES = ("local", "production")

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser = argparse.ArgumentParser(prog="support-assistant-bundle", description="Build and verify model bundles.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", parents=[common],
                           help="build a bundle (atomically; a no-op when already up to date)")
    build.add_argument("--out", required=True, type=Path, help="bundle directory to create or replace")
    build.add_argument("--profile", choices=CLI_PROFILES, default="local",
                       help="local (default, offline) or production (pinned HF exports)")
    build.add_argument("--corpus", type=Path, default=None, help="corpus directory to index (BM25)")
    build.add_argument("--models", type=Path, default=None,
                       help="pinned models file (default: images/models.yaml)")
    verify = sub.add_parser("verify", parents=[common], help="check every file of a bundle against its manifest")
    verify.add_argument("bundle", type=Path)
    return parser


def _summary(bundle: Bundle) -> str:
    return json.dumps({
        "bundle_version": bundle.bundle_version,
        "profile": bundle.profile,
        "path": str(bundle.root),
        "models": bundle.models_info(),
        "index": bundle.index is not None,
        # Passage and sentence vectors computed at build time (bi-encoder bundles with an index).
        "embeddings": bundle.embeddings is not None,
    }, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "build":
            # Imported here: building pulls in onnx and the converters, verifying needs neither.
            from support_assistant.bundler.bundle import DEFAULT_MODELS_FILE, build_bundle

            if args.models is not None and not args.models.is_file():
                raise BundleError(f"{args.models}: models file not found")
            bundle = build_bundle(args.out, profile=args.profile, corpus_dir=args.corpus,
                                  models_file=args.models or DEFAULT_MODELS_FILE)
        else:
            bundle = load_bundle(args.bundle)
    except (BundleError, OSError, ValueError) as exc:
        print(f"support-assistant-bundle {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(_summary(bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
