"""Stage 6: the command line.

    bpcompile compile SPEC... [--target numpy] [-o DIR]

Exit codes: 0 success, 1 verification failed, 2 bad spec or usage.  A bad spec
is reported on one line (file, line, key, problem) with no traceback, and
nothing is written: every spec is compiled before any file is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .compiler import TARGETS, compile
from .errors import SpecError
from .spec import load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _compile_spec(path: str, target: str):
    try:
        return compile(load_spec(path), target=target)
    except SpecError as e:
        raise e.located(file=path) from None
    except RecursionError:
        raise SpecError("the spec nests expressions too deeply", file=path) from None


def cmd_compile(args) -> int:
    compiled = []
    failed = False
    for path in args.specs:
        try:
            compiled.append((path, _compile_spec(path, args.target)))
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
    if failed:
        return EXIT_USAGE
    names = {}
    for path, c in compiled:
        if c.filename in names:
            print(f"error: {path}: name: '{c.spec.name}' is also the name of {names[c.filename]}; "
                  "both would write the same file", file=sys.stderr)
            return EXIT_USAGE
        names[c.filename] = path
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        print(f"error: {out}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    for path, c in compiled:
        written = c.write(out)
        st = c.stats()
        print(f"{path}: {st['nodes']} nodes, {st['adjoints']} adjoints, "
              f"{st['shared']} shared subexpressions, {st['kernels']} kernels "
              f"({st['forward_kernels']} forward, {st['backward_kernels']} backward) -> {written}")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line and exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="bpcompile", description="A compiler for backpropagation: "
                "model spec -> computational graph -> adjoints -> gradient code.")
    p.add_argument("--version", action="version", version=f"bpcompile {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="compile specs into gradient modules")
    c.add_argument("specs", nargs="+", metavar="SPEC", help="model spec files (.yaml, .json)")
    c.add_argument("--target", choices=TARGETS, default="numpy", help="what to generate (default numpy)")
    c.add_argument("-o", "--output", default=".", metavar="DIR", help="output directory (default .)")
    c.set_defaults(run=cmd_compile)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
