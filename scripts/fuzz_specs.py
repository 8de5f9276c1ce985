"""Many more property-based cases than the test suite runs.

    python scripts/fuzz_specs.py [--good 300] [--bad 1000] [--cuda 40]
    python scripts/fuzz_specs.py --hostile 10000 [--seed 0] [--workers 2] [--repros DIR]

Random well-formed specs must compile and pass ``bpcompile.verify``; malformed
ones must get exit code 2 and one clear line.  With ``--cuda N``, N more random
specs are compiled for CUDA, built for the host with the emulation header, and
compared with the NumPy module (needs g++).  Prints how many cases ran and every
failure found (hypothesis shrinks each to a small example).

``--hostile N`` runs the hostile-input fuzz of issue 10 instead (tests/hostile_specs.py):
N hostile specs (the issue's attacks first, then a deterministic stream for
``--seed``) through compile (numpy and cuda), inspect (text, latex, json), graph
and (a sample) verify, in-process in forked workers with a memory limit and a
timeout per command, each generated module imported in a fresh subprocess.
Prints "N cases, F failures" and the failure classes, each with its smallest
cases; ``--repros DIR`` writes those cases there.  Exit 1 if any failed.  The full
run (10,000 cases) takes about 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# one BLAS thread per worker (set before numpy is imported): workers run in parallel
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

import bpcompile  # noqa: E402
from bpcompile.targets.cuda import EMULATION_HEADER  # noqa: E402
from conftest import random_point  # noqa: E402
from spec_strategies import malformed, specs, to_yaml  # noqa: E402
from test_properties import run_cli  # noqa: E402


def emulated_cuda(compiled):
    """The CUDA loader of ``compiled``, with the emulation header beside the .cu."""
    directory = Path(tempfile.mkdtemp(prefix="bpcompile_fuzz_"))
    compiled.write(directory)
    shutil.copy(EMULATION_HEADER, directory)
    path = directory / f"{compiled.spec.name}_cuda.py"
    spec = importlib.util.spec_from_file_location(f"fuzz_{directory.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=300, help="well-formed cases (default 300)")
    ap.add_argument("--bad", type=int, default=1000, help="malformed cases (default 1000)")
    ap.add_argument("--cuda", type=int, default=0, help="specs also checked as emulated CUDA (default 0)")
    ap.add_argument("--hostile", type=int, default=0, metavar="N",
                    help="run N hostile-input cases (issue 10) instead of the property tests")
    ap.add_argument("--seed", type=int, default=0, help="the hostile stream (default 0)")
    ap.add_argument("--start", type=int, default=0, help="first hostile case index (default 0)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per command (default 20)")
    ap.add_argument("--memory-gib", type=float, default=2.0, help="memory limit per worker (default 2 GiB)")
    ap.add_argument("--verify-every", type=int, default=10, help="verify every k-th case that compiles")
    ap.add_argument("--gxx-every", type=int, default=5, help="g++ -fsyntax-only every k-th .cu")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA target")
    ap.add_argument("--repros", metavar="DIR", help="write the smallest cases of each failure class here")
    ap.add_argument("--cases", metavar="I,J,...", help="run only these hostile case indices")
    args = ap.parse_args()
    if args.hostile or args.cases:
        return hostile(args)
    counts = {"good": 0, "bad": 0, "bad_compiled": 0, "cuda": 0}
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    failures = []

    @settings(max_examples=args.good, **common)
    @given(specs())
    def good(spec):
        counts["good"] += 1
        report = bpcompile.verify(spec)
        assert report.ok, to_yaml(spec) + "\n" + report.table()

    @settings(max_examples=args.bad, **common)
    @given(malformed())
    def bad(case):
        label, text = case
        counts["bad"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            code, err = run_cli(Path(tmp), text)
            if code == 0:
                counts["bad_compiled"] += 1
                assert label != "junk", text
                return
            assert code == 2 and len(err.strip().splitlines()) == 1, (label, text, err)

    @settings(max_examples=max(1, args.cuda), **common)
    @given(specs())
    def cuda(spec):
        counts["cuda"] += 1
        numpy_module = bpcompile.compile(spec).load()
        cuda_module = emulated_cuda(bpcompile.compile(spec, target="cuda"))
        params, inputs = random_point(numpy_module, n=5, seed=counts["cuda"])
        want_value, want = numpy_module.value_and_grad(params, **inputs)
        got_value, got = cuda_module.value_and_grad(params, **inputs)
        assert abs(got_value - want_value) <= 1e-12 * max(1.0, abs(want_value)), to_yaml(spec)
        # relative to the problem's scale: an exact 0 against a rounding of 1e-17 is a match
        scale = max([1.0, abs(want_value)] + [float(np.max(np.abs(g))) for g in want.values()])
        for k in want:
            assert np.max(np.abs(got[k] - want[k])) <= 1e-11 * scale, (k, to_yaml(spec))

    tests = [("well-formed", good), ("malformed", bad)]
    if args.cuda:
        os.environ.setdefault("BPCOMPILE_CUDA_EMULATE", "1")
        os.environ.setdefault("BPCOMPILE_CXXFLAGS", "-DBP_MAX_GRID=2")
        tests.append(("emulated CUDA", cuda))
    for name, test in tests:
        start = time.perf_counter()
        try:
            test()
            print(f"{name}: passed ({time.perf_counter() - start:.0f} s)")
        except Exception as e:  # noqa: BLE001 - report and go on
            failures.append((name, e))
            print(f"{name}: FAILED after {time.perf_counter() - start:.0f} s:")
            traceback.print_exception(e, file=sys.stdout)
    print(f"cases run: {counts['good']} well-formed, {counts['bad']} malformed "
          f"({counts['bad_compiled']} mutations that left the spec valid), {counts['cuda']} emulated CUDA; "
          f"failures: {len(failures)}")
    return 1 if failures else 0


def hostile(args) -> int:
    import hostile_specs
    opts = hostile_specs.Options(timeout=args.timeout, memory=int(args.memory_gib * (1 << 30)),
                                 verify_every=args.verify_every, gxx_every=args.gxx_every, cuda=not args.no_cuda)
    indices = ([int(i) for i in args.cases.split(",")] if args.cases
               else list(range(args.start, args.start + args.hostile)))
    print(f"hostile fuzz: {len(indices)} cases of seed {args.seed}, {args.workers} workers, "
          f"{args.timeout:g} s and {args.memory_gib:g} GiB per command", flush=True)
    summary = hostile_specs.run_cases(indices, seed=args.seed, opts=opts, workers=args.workers,
                                      log=lambda m: print(m, flush=True))
    print(hostile_specs.report(summary, seed=args.seed, repro_dir=args.repros))
    return 1 if summary.failing_cases else 0


if __name__ == "__main__":
    sys.exit(main())
