"""Per-statement cost of a generated ``value_and_grad`` (a poor man's line profiler).

    python benchmarks/profile_generated.py benchmarks/specs/digits_mlp_bench.yaml --batch 256

The function body is taken from the generated source with ``ast``; statements
run one by one in a namespace, and before each one runs for real it is timed
in isolation (``timeit`` on the compiled statement, in a copy of the namespace
whose arrays are copied when the statement writes into one in place).  The sum
of the per-statement times is compared with timing the whole function, so the
overhead of the call itself (argument passing, dict building) is visible too.
"""

from __future__ import annotations

import argparse
import ast
import sys
import timeit

import numpy as np

from _common import blas_info, random_batch, set_blas_threads

import bpcompile  # noqa: E402


def _writes_in_place(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.AugAssign):
        return True
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Subscript) for t in stmt.targets)
    return any(isinstance(k, ast.keyword) and k.arg == "out" for k in ast.walk(stmt))


def profile_function(source: str, func: str, namespace: dict, args: dict, rounds: int, min_s: float):
    """[(line text, seconds per run)] for each statement of ``func`` in ``source``."""
    tree = ast.parse(source)
    fdef = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    ns = dict(namespace)
    ns.update({"params": args["params"], "check": True, **args["inputs"]})
    rows = []
    for stmt in fdef.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if isinstance(stmt, ast.Return):
            stmt = ast.Assign(targets=[ast.Name("__ret__", ast.Store())], value=stmt.value)
            ast.fix_missing_locations(stmt)
            text = "return " + ast.unparse(stmt.value)
        else:
            text = ast.unparse(stmt)
        code = compile(ast.Module([stmt], []), "<stmt>", "exec")
        in_place = _writes_in_place(stmt)

        def run(code=code, in_place=in_place):
            local = {k: (v.copy() if in_place and isinstance(v, np.ndarray) else v) for k, v in ns.items()}
            # time only the statement (the copy above is outside the timed loop)
            return timeit.repeat(lambda: exec(code, local), number=number, repeat=rounds)

        number = 1
        while timeit.timeit(lambda: exec(code, dict(ns)), number=number) < min_s and number < 1 << 16:
            number *= 2
        best = min(run()) / number
        rows.append((text, best))
        exec(code, ns)  # advance for real
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--function", default="value_and_grad")
    args = ap.parse_args(argv)
    if args.threads is not None:
        set_blas_threads(args.threads)
    print(f"# machine: {blas_info()}")
    compiled = bpcompile.compile(args.spec)
    module = compiled.load()
    params = module.init_params(0)
    inputs = random_batch(module, args.batch, seed=args.batch)
    rows = profile_function(compiled.source, args.function, vars(module),
                            {"params": params, "inputs": inputs}, args.rounds, 0.02)
    fn = getattr(module, args.function)
    n = max(1, int(0.05 / max(timeit.timeit(lambda: fn(params, **inputs), number=1), 1e-7)))
    whole = min(timeit.repeat(lambda: fn(params, **inputs), number=n, repeat=args.rounds)) / n
    total = sum(t for _, t in rows)
    print(f"# {compiled.spec.name}.{args.function}, batch {args.batch}: whole call {whole * 1e6:.1f} us,"
          f" sum of statements {total * 1e6:.1f} us")
    for text, t in rows:
        print(f"{t * 1e6:9.2f} us {100 * t / total:5.1f}%  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
