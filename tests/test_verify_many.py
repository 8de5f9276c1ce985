"""``bpcompile verify SPEC...``: several specs in one command, checked in worker
processes; one table per spec under a heading naming its file, in the order
given; exit 1 if any check failed, 2 on a bad spec (its one line)."""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys

import pytest

from bpcompile import cli
from bpcompile.tools import verify as verify_module
from conftest import ROOT

TANH = ROOT / "examples" / "tanh_regression.yaml"
LINEAR = ROOT / "examples" / "seed004_linear.yaml"
CUBIC = ROOT / "examples" / "seed004_cubic.yaml"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bpcompile", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)


def sections(stdout: str) -> dict:
    """heading path -> the lines of its table."""
    out, current = {}, None
    for line in stdout.splitlines():
        m = re.fullmatch(r"== (.+) ==", line)
        if m:
            current = out.setdefault(m.group(1), [])
        else:
            assert current is not None, f"a line before the first heading: {line!r}"
            current.append(line)
    return out


def test_several_specs_one_table_each_in_order():
    r = run_cli("verify", LINEAR, TANH, CUBIC)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    found = sections(r.stdout)
    assert list(found) == [str(LINEAR), str(TANH), str(CUBIC)]
    for path, name in ((LINEAR, "seed004_linear"), (TANH, "tanh_regression"), (CUBIC, "seed004_cubic")):
        lines = found[str(path)]
        assert lines[0] == f"verify {name}"
        assert lines[-1] == "ok: every check passed"
    assert any(re.match(r"W\s+\[3, 3\]\s+sympy\s+\S+\s+\S+\s+ok$", ln) for ln in found[str(TANH)])


def test_tables_are_those_of_one_spec_at_a_time():
    """The worker processes print what verify of each spec alone prints."""
    r = run_cli("verify", TANH, LINEAR)
    assert r.returncode == 0, r.stdout + r.stderr
    found = sections(r.stdout)
    for path in (TANH, LINEAR):
        alone = run_cli("verify", path)
        assert alone.returncode == 0
        assert found[str(path)] == alone.stdout.splitlines()


def test_bad_spec_among_good_ones_exits_2_with_its_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninputs: {x: [3]}\nparams: {W: [2, 2]}\nloss: sum(W @ x)\n")
    r = run_cli("verify", TANH, bad, LINEAR)
    assert r.returncode == 2
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and str(bad) in errors[0] and "loss" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    # the good specs are still checked and reported
    assert list(sections(r.stdout)) == [str(TANH), str(LINEAR)]


def test_missing_file_among_good_ones_exits_2(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    r = run_cli("verify", LINEAR, missing)
    assert r.returncode == 2
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and str(missing) in errors[0], r.stderr
    assert list(sections(r.stdout)) == [str(LINEAR)]


def test_module_with_several_specs_is_a_usage_error(tmp_path):
    r = run_cli("verify", TANH, LINEAR, "--module", tmp_path / "m.py")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip() == "error: --module checks one spec; 2 were given"


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="the workers see this process's patch only when forked")
@pytest.mark.parametrize("cpus", [1, 2], ids=["one-process", "workers"])
def test_a_failed_check_exits_1_and_the_others_still_report(monkeypatch, capsys, cpus):
    """One spec's report failing (a patched verify: the generated modules pass)
    makes the command exit 1; with one CPU the specs are checked in this process."""
    real = verify_module.verify

    def failing_for_tanh(spec, module=None, **kw):
        report = real(spec, module, **kw)
        if report.name == "tanh_regression":
            row = report.rows[-1]
            report.rows[-1] = verify_module.Row(row.name, row.shape, row.check, 1.0, 1.0, False, "planted")
        return report

    monkeypatch.setattr(verify_module, "verify", failing_for_tanh)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: cpus)
    assert cli.main(["verify", str(LINEAR), str(TANH)]) == 1
    found = sections(capsys.readouterr().out)
    assert found[str(LINEAR)][-1] == "ok: every check passed"
    assert found[str(TANH)][-1].startswith("FAILED: ")


def test_threads_verifying_at_once_each_get_their_verdict(tmp_path):
    """The module's processes are forked by one server per verify (or per worker);
    a thread that finds it busy spawns its own process: no answer goes astray."""
    from concurrent.futures import ThreadPoolExecutor

    import bpcompile
    from test_verify import negate_assignment
    from test_verify_isolation import module_with
    wrong = module_with(tmp_path, edit=negate_assignment("W_bar"), name="wrong.py")
    jobs = [(TANH, None), (LINEAR, None), (TANH, wrong), (CUBIC, None)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        oks = list(pool.map(lambda job: bpcompile.verify(job[0], module=job[1]).ok, jobs))
    assert oks == [True, True, False, True]


def test_kept_fork_server_serves_every_spec_of_a_worker():
    """keep_fork_server(): one server for the process, each spec's batches forked by it."""
    v = verify_module
    saved = v._ForkServer._active, v._ForkServer._users, v._ForkServer._kept
    v._ForkServer._active, v._ForkServer._users, v._ForkServer._kept = None, 0, False
    pids = []
    real = v._ForkServer.run

    def spy(self, work, timeout):
        pids.append(self.proc.pid)
        return real(self, work, timeout)

    try:
        v._ForkServer.run = spy
        v.keep_fork_server()
        assert v.verify(LINEAR).ok and v.verify(CUBIC).ok
    finally:
        v._ForkServer.run = real
        kept = v._ForkServer._active
        v._ForkServer._active, v._ForkServer._users, v._ForkServer._kept = saved
        if kept is not None:
            kept.close()
    assert len(pids) >= 4 and len(set(pids)) == 1


def test_one_cpu_checks_every_spec_through_one_fork_server(monkeypatch):
    """With one CPU the specs are checked in this process, sharing one server,
    which is closed at the end: none is left running."""
    v = verify_module
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 1)
    servers = []
    real = v._ForkServer.run

    def spy(self, work, timeout):
        servers.append(self)
        return real(self, work, timeout)

    monkeypatch.setattr(v._ForkServer, "run", spy)
    assert cli.main(["verify", str(LINEAR), str(CUBIC)]) == 0
    assert len(servers) >= 4 and len(set(servers)) == 1
    assert servers[0].proc.returncode is not None   # closed and reaped
    assert v._ForkServer.current() is None


def test_the_module_processes_run_one_blas_thread_unless_told(monkeypatch):
    """Small products in a team of BLAS threads on a loaded machine cost more than
    they save: the module's processes get one thread, unless the caller chose."""
    from bpcompile.tools import verify as v
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = v._child_env()
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["OMP_NUM_THREADS"] == "2"
