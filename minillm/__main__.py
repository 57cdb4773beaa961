"""The command line: `python -m minillm <command>`; `python -m minillm --help` lists them."""
import argparse
import sys


def cmd_data(args: argparse.Namespace) -> int:
    from minillm.corpus import CorpusError, corpus_path

    try:
        path = corpus_path(offline=True if args.offline else None)  # None: $MINILLM_OFFLINE decides
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Tiny Shakespeare is ready: {path} (SHA-256 verified)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minillm", description="minillm: a GPT built from scratch in twenty lessons.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="download Tiny Shakespeare into the cache (or verify the copy there)",
                       description="Download Tiny Shakespeare once, checked against its SHA-256, into $MINILLM_DATA "
                                   "(default ~/.cache/minillm); a later call only verifies the copy.")
    p.add_argument("--offline", action="store_true", help="never download; fail with instructions if there is no good copy")
    p.set_defaults(run=cmd_data)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
