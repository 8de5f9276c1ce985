"""Compile and verify time: a thin chain of 16 to 1,024 layers, the command line, verify.

    python benchmarks/bench_compile_time.py            # full run
    python benchmarks/bench_compile_time.py --quick    # smoke run (16 to 128 layers, one round)

Three figures (issue 14's goals in brackets):

- in process: the NumPy target compiles a thin chain (``layers:`` of ``depth`` x
  {dense: 4, activation: tanh}, squared error) of 16, 32, ..., 1,024 layers; the
  best of ``rounds`` compiles after one warm-up (the min: other processes on a
  shared machine only ever add time), with the graph's node count, the seconds per
  node and the slope between successive sizes (added seconds per added layer: flat
  when compile time is linear in the nodes) [128 layers <= 0.15 s; linear to 1,024];
- as a command: ``bpcompile compile`` of the 128-layer chain, the whole process,
  imports included, best of ``rounds`` [<= 0.6 s];
- ``bpcompile verify`` of the twelve examples in one command, wall time [<= 3 s].

Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

import bpcompile  # noqa: E402

DEPTHS = (16, 32, 64, 128, 256, 512, 1024)
COMMAND_DEPTH = 128


def chain_spec(depth, width=4):
    """A thin chain: ``depth`` dense tanh layers of ``width`` units, squared error."""
    return {
        "name": f"thin_chain_{depth}",
        "inputs": {"x": [width], "y": [width]},
        "layers": [{"input": "x"}] + [{"dense": width, "activation": "tanh"}] * depth,
        "loss": f"sum((h{depth} - y)**2) / 2",
    }


def chain_yaml(depth, width=4):
    """The same chain as a YAML file's text (what the command reads)."""
    layers = "\n".join(f"  - {{dense: {width}, activation: tanh}}" for _ in range(depth))
    return (f"name: thin_chain_{depth}\ninputs:\n  x: [{width}]\n  y: [{width}]\n"
            f"layers:\n  - {{input: x}}\n{layers}\nloss: sum((h{depth} - y)**2) / 2\n")


def best_compile(spec, rounds):
    """The fastest of ``rounds`` compiles (seconds) and the graph's node count."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        compiled = bpcompile.compile(spec, target="numpy")
        best = min(best, time.perf_counter() - t0)
    return best, compiled.stats()["nodes"]


def command_seconds(argv, rounds, expect=0):
    """The fastest of ``rounds`` runs of ``python -m bpcompile ARGV`` (wall seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bpcompile", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != expect:
            raise SystemExit(f"bpcompile {' '.join(argv)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 to 128 layers, one round")
    ap.add_argument("--rounds", type=int, default=None, help="compiles per size (default 3)")
    ap.add_argument("--no-verify", action="store_true", help="skip the verify command")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    depths = [d for d in DEPTHS if d <= COMMAND_DEPTH] if args.quick else DEPTHS

    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {rounds}")
    bpcompile.compile(chain_spec(2))  # warm-up: imports, caches

    header = f"{'layers':>6} {'nodes':>6} {'seconds':>8} {'us/node':>8} {'slope ms/layer':>14}"
    print(header)
    print("-" * len(header))
    rows = []
    for d in depths:
        t, nodes = best_compile(chain_spec(d), rounds)
        slope = ""
        if rows:
            d0, _, t0 = rows[-1]
            slope = f"{(t - t0) / (d - d0) * 1e3:.3f}"
        rows.append((d, nodes, t))
        print(f"{d:>6} {nodes:>6} {t:>8.3f} {t / nodes * 1e6:>8.1f} {slope:>14}", flush=True)
    (d0, _, t0), (d1, _, t1) = rows[0], rows[-1]
    print(f"in process: {COMMAND_DEPTH} layers {dict((d, t) for d, _, t in rows)[COMMAND_DEPTH]:.3f} s "
          f"(goal <= 0.15 s); {d1} layers take x{t1 / t0:.1f} the time of {d0} "
          f"(x{d1 / d0:g} the layers; linear: the slope stays flat)")

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"thin_chain_{COMMAND_DEPTH}.yaml"
        spec.write_text(chain_yaml(COMMAND_DEPTH))
        t = command_seconds(["compile", str(spec), "-o", tmp], rounds)
        print(f"command: bpcompile compile of the {COMMAND_DEPTH}-layer chain {t:.3f} s (goal <= 0.6 s)")
        t = command_seconds(["--version"], rounds)
        print(f"command: bpcompile --version (start-up and imports) {t:.3f} s")

    if not args.no_verify:
        examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.yaml"))
        t = command_seconds(["verify", *examples], 1)
        print(f"command: bpcompile verify of the {len(examples)} examples {t:.2f} s (goal <= 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
