"""The `xent` command: ``xent demo`` and ``xent bench``."""
import argparse
import os
import sys


def _positive_digits(text):
    """Whether `text` is a positive integer in ASCII digits (``str.isdigit`` also
    takes digits that ``int`` refuses, such as ``"²"``)."""
    return text.isascii() and text.isdigit() and int(text) > 0


def _shape(text):
    """``"8192x32000"`` → ``(8192, 32000)``: rows and classes, both positive, of
    logits whose bench fits in this machine's memory."""
    rows, _, classes = text.lower().partition("x")
    if not (_positive_digits(rows) and _positive_digits(classes)):
        raise argparse.ArgumentTypeError(
            f"expected ROWSxCLASSES with two positive integers, such as 8192x32000; got {text!r}")
    from xent._bench._machine import too_big

    reason = too_big((int(rows), int(classes)))
    if reason:
        raise argparse.ArgumentTypeError(reason)
    return int(rows), int(classes)


def _make_out_folder(parser, folder):
    """Make the results folder once the command line is known good, so that a
    path that cannot be one stops the bench before any timing rather than
    after all of it (and a rejected command line makes nothing)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: expected a folder the results can be written to; "
                     f"got {folder!r} ({error.strerror})")


def _check_environment(parser):
    """A bad ``XENT_KERNELS`` or ``NUMBA_NUM_THREADS``, or fused kernels that
    cannot load (``NUMBA_DISABLE_JIT``), as an error line, not a traceback from
    the first call (and before the bench makes its folder)."""
    from xent import _core, _threads

    try:
        _threads.environment_threads()
        if _core.kernel_name_from_environment() == "fused":
            _core.kernels()
    except ValueError as error:
        parser.error(str(error))
    except ImportError as error:
        message = str(error).removeprefix("xent: ")   # (argparse says "xent: error: ")
        parser.error(f"{message} (from the command line: XENT_KERNELS=numpy)")


def _parser():
    from xent import __version__
    from xent._bench._run import DTYPES   # (22 ms; the rest of the bench stays unimported)

    parser = argparse.ArgumentParser(
        prog="xent", description="TensorFlow's softmax cross-entropy without TensorFlow: "
                                 "run its documented examples, or time it against its peers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_help = ("compute TensorFlow's documented examples with xent, beside the values TF's "
                 "documentation prints (and on PyTorch tensors and JAX arrays where installed)")
    sub.add_parser("demo", help=demo_help, description=demo_help)
    bench_help = ("time xent against every installed peer; results go to --out as JSON, "
                  "Markdown and a PNG")
    bench = sub.add_parser("bench", help="time xent against every installed peer",
                           description=bench_help)
    bench.add_argument("--quick", action="store_true",
                       help="small shapes, few repeats (a minute or two on 2 cores, most of it "
                            "importing the peers and compiling)")
    bench.add_argument("--out", default="bench/results",
                       help="folder for the JSON, Markdown and PNG results (made if missing; "
                            "default: bench/results under the current folder)")
    bench.add_argument("--shape", action="append", type=_shape, metavar="ROWSxCLASSES",
                       help="time only this input (repeatable), e.g. --shape 8192x32000; "
                            "the check of what each library leaves running after a call "
                            "keeps its own 512x32000 float32 input")
    bench.add_argument("--dtype", action="append", choices=DTYPES,
                       help="time only this dtype (repeatable; default both)")
    bench.set_defaults(bench_parser=bench)
    return parser


def main(argv=None):
    """Entry point of the `xent` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_environment(parser)
    try:
        if args.command == "demo":
            from xent import _demo

            return _demo.run()
        from xent import _bench

        _make_out_folder(args.bench_parser, args.out)   # (its errors show bench's usage line)
        return _bench.main(quick=args.quick, out=args.out, shapes=args.shape, dtypes=args.dtype)
    except BrokenPipeError:
        # The reader left (``xent demo | head -1``): no traceback, and none when
        # Python flushes stdout at exit either (Python's documented way).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
