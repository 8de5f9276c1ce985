"""Many more property-based cases than the test suite runs.

    python scripts/fuzz_specs.py [--good 300] [--bad 1000]

Random well-formed specs must compile and pass ``bpcompile.verify``; malformed
ones must get exit code 2 and one clear line.  Prints how many cases ran and every
failure found (hypothesis shrinks each to a small example).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import bpcompile  # noqa: E402
from spec_strategies import malformed, specs, to_yaml  # noqa: E402
from test_properties import run_cli  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=300, help="well-formed cases (default 300)")
    ap.add_argument("--bad", type=int, default=1000, help="malformed cases (default 1000)")
    args = ap.parse_args()
    counts = {"good": 0, "bad": 0, "bad_compiled": 0}
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

    for name, test in (("well-formed", good), ("malformed", bad)):
        start = time.perf_counter()
        try:
            test()
            print(f"{name}: passed ({time.perf_counter() - start:.0f} s)")
        except Exception as e:  # noqa: BLE001 - report and go on
            failures.append((name, e))
            print(f"{name}: FAILED after {time.perf_counter() - start:.0f} s:")
            traceback.print_exception(e, file=sys.stdout)
    print(f"cases run: {counts['good']} well-formed, {counts['bad']} malformed "
          f"({counts['bad_compiled']} mutations that left the spec valid); failures: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
