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
  imports included, best of ``rounds`` [<= 0.6 s]: with a bytecode cache (as an
  installed package runs, its modules compiled to bytecode once) and as the
  environment has it (PYTHONDONTWRITEBYTECODE, set on the team's VM, makes every run
  compile an editable checkout's modules from source again);
- ``bpcompile verify`` of every example in one command, wall time, best of
  ``--verify-rounds`` [<= 3 s].

The linear fit of seconds against layers over all sizes is printed too (its
slope, ms per layer, and the largest size's time against the fit's): compile
time linear in the nodes keeps the successive slopes flat and the fit close.
On a shared machine, run it when it is quiet or read the best of more rounds.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import os
import resource
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
    """The fastest of ``rounds`` compiles (wall seconds and CPU seconds, each the
    min) and the graph's node count."""
    best = cpu = float("inf")
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        compiled = bpcompile.compile(spec, target="numpy")
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return best, cpu, compiled.stats()["nodes"]


def linear_fit(xs, ys):
    """Least-squares (slope, intercept) of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def command_seconds(argv, rounds, expect=0, bytecode=None):
    """The fastest of ``rounds`` runs of ``python -m bpcompile ARGV``: wall seconds,
    and the CPU seconds (user + system, the command and its children) of that run.

    ``bytecode``: a folder for Python's bytecode cache (PYTHONPYCACHEPREFIX), filled
    by an untimed first run: the command as an installed package runs it, every
    module compiled once (pip compiles them when it installs).  None: as the
    environment has it; with PYTHONDONTWRITEBYTECODE set (as on the team's VM) an
    editable checkout's modules are compiled from source again by every run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if bytecode is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode)
        subprocess.run([sys.executable, "-m", "bpcompile", *argv], cwd=ROOT, env=env, capture_output=True)
    best, cpu = float("inf"), None
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bpcompile", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if wall < best:
            best = wall
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != expect:
            raise SystemExit(f"bpcompile {' '.join(argv)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return best, cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 to 128 layers, one round")
    ap.add_argument("--rounds", type=int, default=None, help="compiles per size (default 3)")
    ap.add_argument("--no-verify", action="store_true", help="skip the verify command")
    ap.add_argument("--verify-rounds", type=int, default=1, help="verify commands timed (default 1)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    depths = [d for d in DEPTHS if d <= COMMAND_DEPTH] if args.quick else DEPTHS

    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"best of {rounds}")
    bpcompile.compile(chain_spec(2))  # warm-up: imports, caches

    header = f"{'layers':>6} {'nodes':>6} {'seconds':>8} {'us/node':>8} {'slope ms/layer':>14} {'cpu s':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for d in depths:
        t, cpu, nodes = best_compile(chain_spec(d), rounds)
        slope = ""
        if rows:
            d0, _, t0 = rows[-1]
            slope = f"{(t - t0) / (d - d0) * 1e3:.3f}"
        rows.append((d, nodes, t))
        print(f"{d:>6} {nodes:>6} {t:>8.3f} {t / nodes * 1e6:>8.1f} {slope:>14} {cpu:>8.3f}", flush=True)
    (d0, _, t0), (d1, _, t1) = rows[0], rows[-1]
    print(f"in process: {COMMAND_DEPTH} layers {dict((d, t) for d, _, t in rows)[COMMAND_DEPTH]:.3f} s "
          f"(goal <= 0.15 s); {d1} layers take x{t1 / t0:.1f} the time of {d0} "
          f"(x{d1 / d0:g} the layers; linear: the slope stays flat)")
    slope, intercept = linear_fit([d for d, _, _ in rows], [t for _, _, t in rows])
    print(f"linear fit: {slope * 1e3:.3f} ms per layer + {intercept * 1e3:.0f} ms; "
          f"{d1} layers {t1:.3f} s against the fit's {slope * d1 + intercept:.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"thin_chain_{COMMAND_DEPTH}.yaml"
        spec.write_text(chain_yaml(COMMAND_DEPTH))
        # as the environment has it, then with a bytecode cache (as an installed package runs)
        no_cache = "; no bytecode cache: PYTHONDONTWRITEBYTECODE" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
        for bytecode, how, note in ((None, "", no_cache),
                                    (Path(tmp) / "pycache", ", bytecode cached (as installed)", "")):
            t, cpu = command_seconds(["compile", str(spec), "-o", tmp], rounds, bytecode=bytecode)
            print(f"command{how}: bpcompile compile of the {COMMAND_DEPTH}-layer chain {t:.3f} s "
                  f"(goal <= 0.6 s; cpu {cpu:.3f} s{note})")
            t, cpu = command_seconds(["--version"], rounds, bytecode=bytecode)
            print(f"command{how}: bpcompile --version (start-up and imports) {t:.3f} s (cpu {cpu:.3f} s{note})")

    if not args.no_verify:
        examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.yaml"))
        t, cpu = command_seconds(["verify", *examples], args.verify_rounds)
        print(f"command: bpcompile verify of the {len(examples)} examples {t:.2f} s (goal <= 3 s; "
              f"cpu {cpu:.2f} s on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
