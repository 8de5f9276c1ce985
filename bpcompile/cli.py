"""Stage 6: the command line.

    bpcompile compile SPEC... [--target NAME] [-o DIR]
    bpcompile inspect SPEC [--format text|latex|json]
    bpcompile graph SPEC -o FILE.{dot,svg,png}
    bpcompile verify SPEC... [--module FILE]

Exit codes: 0 success, 1 verification failed, 2 bad spec or usage.  A bad spec
is reported on one line (file, line, key, problem) with no traceback, and
nothing is written: every spec is compiled before any file is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from . import targets
from .compiler import compile
from .errors import SpecError
from .escape import terminal
from .frontend.spec import load_spec
from .limits import VERIFY_TIMEOUT

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def say(text: str) -> None:
    """Print to stdout.  Everything the command line prints goes through here or
    ``complain``: spec text is data, so nothing in it reaches the terminal raw."""
    sys.stdout.write(terminal(text, multiline=True))
    if not text.endswith("\n"):
        sys.stdout.write("\n")


def complain(text: str) -> None:
    """One line on stderr: ``error: ...``."""
    print(f"error: {terminal(text)}", file=sys.stderr)


def _os_error(e: OSError) -> str:
    where = e.filename if e.filename is not None else ""
    what = e.strerror or str(e)
    return f"{where}: {what}" if where else what


@contextlib.contextmanager
def _about(path: str):
    """Errors from reading or compiling the spec at ``path`` name that file."""
    try:
        yield
    except SpecError as e:
        raise e.located(file=path) from None
    except RecursionError:
        raise SpecError("the spec nests expressions too deeply", file=path) from None


def _compile_spec(path: str, target: str):
    with _about(path):
        return compile(load_spec(path), target=target)


def cmd_compile(args) -> int:
    compiled = []
    failed = False
    for path in args.specs:
        try:
            compiled.append((path, _compile_spec(path, args.target)))
        except SpecError as e:
            complain(str(e))
            failed = True
    if failed:
        return EXIT_USAGE
    names = {}
    for path, c in compiled:
        if c.filename in names:
            complain(f"{path}: name: '{c.spec.name}' is also the name of {names[c.filename]}; "
                     "both would write the same file")
            return EXIT_USAGE
        names[c.filename] = path
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        complain(f"{out}: -o names a file, not a directory")
        return EXIT_USAGE
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        complain(f"{out}: cannot create the output directory ({e.strerror or e})")
        return EXIT_USAGE
    if not os.access(out, os.W_OK | os.X_OK):
        complain(f"{out}: the output directory is not writable")
        return EXIT_USAGE
    for path, c in compiled:
        written = c.write(out)
        st = c.stats()
        say(f"{path}: {st['nodes']} graph nodes ({st['forward_nodes']} forward, {st['reverse_nodes']} added by "
            f"reverse mode), {st['adjoints']} adjoints, "
            f"{st['shared']} shared subexpressions, {st['kernels']} kernels "
            f"({st['forward_kernels']} forward, {st['backward_kernels']} backward) -> {written}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    from .tools import inspect as explain
    compiled = _compile_spec(args.spec, targets.DEFAULT)
    say(explain.render(compiled, args.format))
    return EXIT_OK


def cmd_graph(args) -> int:
    from .tools import draw
    if Path(args.output).suffix not in draw.FORMATS:
        complain(f"{args.output}: the picture is written as {', '.join(draw.FORMATS)}")
        return EXIT_USAGE
    compiled = _compile_spec(args.spec, targets.DEFAULT)
    try:
        path, _, counts = draw.write(compiled, args.output)
    except draw.MissingMatplotlib as e:
        complain(f"{args.output}: {e}")
        return EXIT_USAGE
    say(f"{args.spec}: {draw.summary(counts)} -> {path}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from .tools.verify import verify
    if len(args.specs) == 1:
        with _about(args.specs[0]):
            report = verify(load_spec(args.specs[0]), module=args.module)
        say(report.table())
        return EXIT_OK if report.ok else EXIT_FAILED
    if args.module is not None:
        complain(f"--module checks one spec; {len(args.specs)} were given")
        return EXIT_USAGE
    from .tools import verify as _   # noqa: F401 - imported once, before the workers fork
    # several specs: checked at once in a few worker processes (forked where the
    # platform can: they start with the verifier imported), reported in the given
    # order, each table under a heading naming its file; a bad spec is its one line.
    # Each worker keeps one fork server for the modules' processes of all its specs.
    code = EXIT_OK
    for path, (status, text) in zip(args.specs, _in_workers(_verify_one, args.specs, _verify_worker,
                                                            _verify_alone)):
        if status == EXIT_USAGE:
            complain(text)
        else:
            say(f"== {path} ==\n{text}")
        code = max(code, status)
    return code


def _verify_one(path: str) -> tuple:
    """(exit status, the report's table or the one-line error) of ``verify`` of one spec."""
    from .tools.verify import verify
    try:
        with _about(path):
            report = verify(load_spec(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:   # noqa: BLE001 - each reported on its line, as main() does
        return EXIT_USAGE, _problem(e)
    return (EXIT_OK if report.ok else EXIT_FAILED), report.table()


def _verify_worker() -> None:
    """A worker of ``verify SPEC...``: one fork server for all the specs it checks."""
    from .tools.verify import keep_fork_server
    keep_fork_server()


def _verify_alone():
    """``verify SPEC...`` in this process (one CPU): one fork server for all its specs."""
    from .tools.verify import fork_server
    return fork_server()


def _in_workers(fn, items, initializer=None, alone=None):
    """``map(fn, items)`` in up to os.cpu_count() worker processes (each first
    running ``initializer``), each result as soon as it and those before it are done;
    in this process, within the context ``alone()``, when there is one CPU or item."""
    import concurrent.futures
    import multiprocessing
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2:
        with alone() if alone is not None else contextlib.nullcontext():
            yield from map(fn, items)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool:
        yield from pool.map(fn, items)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line and exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {terminal(message)} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="bpcompile", description="A compiler for backpropagation: "
                "model spec -> computational graph -> adjoints -> gradient code.")
    p.add_argument("--version", action="version", version=f"bpcompile {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="compile specs into gradient modules")
    c.add_argument("specs", nargs="+", metavar="SPEC", help="model spec files (.yaml, .json)")
    c.add_argument("--target", choices=targets.names(), default=targets.DEFAULT,
                   help="what to generate: " + "; ".join(f"{t} ({targets.summary(t)})" for t in targets.names())
                   + f" (default {targets.DEFAULT})")
    c.add_argument("-o", "--output", default=".", metavar="DIR", help="output directory (default .)")
    c.set_defaults(run=cmd_compile)

    i = sub.add_parser("inspect", help="show the forward and adjoint programs, shared work, op counts")
    i.add_argument("spec", metavar="SPEC", help="model spec file (.yaml, .json)")
    i.add_argument("--format", choices=("text", "latex", "json"), default="text")
    i.set_defaults(run=cmd_inspect)

    g = sub.add_parser("graph", help="draw the computational graph and the adjoint flow",
                       description="Draw the computational graph: forward edges and the adjoint flow. "
                       ".dot needs nothing; .svg and .png need matplotlib (pip install \"bpcompile[graph]\").")
    g.add_argument("spec", metavar="SPEC", help="model spec file (.yaml, .json)")
    g.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.dot, FILE.svg or FILE.png")
    g.set_defaults(run=cmd_graph)

    v = sub.add_parser("verify", help="check a gradient against SymPy and finite differences",
                       description="Compare the gradient of the generated module (or of --module FILE) with "
                       "the derivative of the full SymPy expansion of the loss at small sizes and with central "
                       "finite differences; a float32 module is checked in float64 and in float32. "
                       "Exit 1 on a mismatch.")
    v.add_argument("specs", nargs="+", metavar="SPEC",
                   help="model spec files (.yaml, .json): several are checked at once, in worker processes, "
                        "each table under a heading naming its file")
    v.add_argument("--module", metavar="FILE",
                   help="a generated .py module to check (e.g. one someone edited) instead of the spec "
                        "compiled afresh; like the fresh one, it runs in a separate Python process with "
                        f"no stdin and a {VERIFY_TIMEOUT:g} s limit, and only the numbers it returns are judged: "
                        "a module that hangs, crashes or exits fails the check (exit 1); one that cannot "
                        "be imported or does not match SPEC is a usage error (exit 2)")
    v.set_defaults(run=cmd_verify)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        return EXIT_OK
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - each on one line (see _problem)
        complain(_problem(e))
        return EXIT_USAGE


def _problem(e: BaseException) -> str:
    """The one line an error of a command is reported as (raised again, a bug of
    ours, when BPCOMPILE_TRACEBACK is set)."""
    if isinstance(e, SpecError):
        return str(e)
    if isinstance(e, MemoryError):
        return ("out of memory: the spec describes more than this machine can compile "
                "(see SECURITY.md for the limits)")
    if isinstance(e, OSError):
        # a file we were told to read or write: the user's to fix (an unwritable -o, a full disk)
        return _os_error(e)
    if os.environ.get("BPCOMPILE_TRACEBACK"):
        raise e
    detail = " ".join(str(e).split())
    return (f"internal compiler error ({type(e).__name__}: {detail}); this is a bug in bpcompile, "
            "please report it with the spec (BPCOMPILE_TRACEBACK=1 shows where)")


if __name__ == "__main__":
    sys.exit(main())
