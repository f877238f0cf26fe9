"""The `xent` command: ``xent demo`` and ``xent bench``."""
import argparse
import sys


def _parser():
    parser = argparse.ArgumentParser(prog="xent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="compute TensorFlow's documented examples with xent, beside "
                                "the values TF's documentation prints")
    bench = sub.add_parser("bench", help="time xent against every installed peer")
    bench.add_argument("--quick", action="store_true", help="small shapes, few repeats (< 1 minute)")
    bench.add_argument("--out", default="bench/results", help="folder for the JSON and PNG results")
    return parser


def main(argv=None):
    """Entry point of the `xent` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from xent import _demo

        return _demo.run()
    from xent import _bench

    return _bench.main(quick=args.quick, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
