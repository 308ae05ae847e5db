"""``python -m logexec demo``: the self-check, its verification, --compare and its options."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from logexec.__main__ import main
from logexec._selfcheck import _compare, _demo, _workload

pytestmark = pytest.mark.integration

SUMMARY = re.compile(
    r"^verified: records=(\d+) workers=(\d+) lost=0 duplicated=0 corrupt=0 seconds=[0-9.]+$", re.M
)


def read_keys(path: Path) -> list[tuple[int, int]]:
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = json.loads(line)
        keys.append((fields["worker"], fields["counter"]))
    return keys


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.timeout(30)
def test_demo_verifies_every_record_once(
    start_method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo writes one JSON line per record, each (worker, counter) once, and exits 0."""
    out = tmp_path / "out.jsonl"
    status = main(
        ["demo", "--records", "601", "--workers", "3", "--start-method", start_method, "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert SUMMARY.search(printed).groups() == ("601", "3")  # type: ignore[union-attr]
    assert f"start method  {start_method}" in printed
    keys = read_keys(out)
    assert sorted(keys) == [(w, c) for w, n in enumerate([201, 200, 200]) for c in range(n)]


@pytest.mark.timeout(60)
def test_demo_as_a_command(tmp_path: Path) -> None:
    """`python -m logexec demo` runs as a command, prints the summary and deletes its verified temp file."""
    completed = subprocess.run(
        [sys.executable, "-m", "logexec", "demo", "--records", "2000", "--workers", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr
    assert SUMMARY.search(completed.stdout).groups() == ("2000", "2")  # type: ignore[union-attr]
    path = re.search(
        r"^output: (\S+) \(a temporary file, deleted if it verifies; --out FILE keeps it\)$",
        completed.stdout,
        re.M,
    ).group(1)  # type: ignore[union-attr]
    assert Path(path).parent == tmp_path
    assert f"file          {path} (deleted after verifying)" in completed.stdout
    assert list(tmp_path.iterdir()) == []
    # Not a terminal: plain progress lines, no carriage returns.
    assert "demo: 2,000/2,000 records handled" in completed.stderr
    assert "\r" not in completed.stderr


@pytest.mark.timeout(30)
def test_out_keeps_the_file_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --out the file is kept after a verified run, and no temporary file is made."""
    out = tmp_path / "kept.jsonl"
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(temporary))
        status = main(
            ["demo", "--records", "40", "--workers", "2", "--start-method", "fork", "--out", str(out)]
        )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"output: {out}\n" in printed
    assert len(read_keys(out)) == 40
    assert list(temporary.iterdir()) == []


@pytest.mark.timeout(30)
def test_a_failed_verification_keeps_the_temporary_file_and_says_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out, a run that fails verification keeps its file and prints its path at the end."""

    class DropOne(_demo.CountingFilter):
        def filter(self, record: logging.LogRecord) -> bool:
            super().filter(record)
            return self.count != 3

    monkeypatch.setattr(_demo, "CountingFilter", DropOne)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status = main(["demo", "--records", "30", "--workers", "2", "--start-method", "fork"])
    printed = capsys.readouterr().out
    assert status == 1, printed
    (kept,) = tmp_path.iterdir()
    assert printed.splitlines()[-1] == f"the output is kept for inspection: {kept}"
    assert len(read_keys(kept)) == 29


@pytest.mark.timeout(10)
def test_an_interrupted_run_leaves_no_temporary_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped by an exception (Ctrl-C) deletes its temporary file, verified or not."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_demo, "run_workload", interrupted)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--records", "30", "--workers", "2"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_progress_is_redrawn_in_place_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the progress line is redrawn with \\r and ends with a newline."""
    terminal, printed = FakeTerminal(), io.StringIO()
    status = _demo.run_demo(300, 2, "fork", str(tmp_path / "out"), False, None, printed, terminal)
    assert status == 0, printed.getvalue()
    shown = terminal.getvalue()
    assert shown.startswith("\r")
    last = shown.split("\r")[-1]
    assert last.startswith("\x1b[Kdemo: 300/300 records handled (100.0%)")
    assert last.endswith("\n")


@pytest.mark.timeout(30)
def test_a_record_missing_from_the_file_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If a record does not reach the file, the demo says FAILED with lost=1 and exits 1."""

    class DropOne(_demo.CountingFilter):
        def filter(self, record: logging.LogRecord) -> bool:
            super().filter(record)
            return self.count != 7

    monkeypatch.setattr(_demo, "CountingFilter", DropOne)
    status = main(
        ["demo", "--records", "50", "--workers", "2", "--start-method", "fork", "--out", str(tmp_path / "o")]
    )
    assert status == 1
    assert "FAILED: records=50 workers=2 lost=1 duplicated=0 corrupt=0" in capsys.readouterr().out


@pytest.mark.timeout(10)
def test_a_shutdown_that_hangs_is_reported_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """If shutdown() does not return in time, the demo reports a hang instead of hanging."""
    release = threading.Event()

    class HangingExecutor:
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            release.wait(timeout=10)

    monkeypatch.setattr(_demo, "SHUTDOWN_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(_demo, "hung_threads_left", False)
    try:
        problem = _demo._shut_down(HangingExecutor(), cancel=False)  # type: ignore[arg-type]
    finally:
        release.set()
    assert problem == "shutdown() did not return within 0.2 s (a hang in logexec)"
    assert _demo.hung_threads_left


@pytest.mark.timeout(5)
def test_verification_counts_lost_duplicated_and_corrupt(tmp_path: Path) -> None:
    """Reading back finds missing, repeated and unparsable lines; unpromised extras are not errors."""
    path = tmp_path / "lines"
    lines = [
        _workload.format_line(0, 0, 1, "m"),
        _workload.format_line(0, 0, 1, "m"),  # duplicated
        _workload.format_line(0, 2, 1, "m"),  # counter 1 lost
        _workload.format_line(1, 0, 1, "m")[:20],  # cut off: corrupt, and (1, 0) lost
        '{"worker": 5, "counter": 0}',  # no such worker: corrupt
        '["not", "an", "object"]',
        _workload.format_line(1, 1, 1, "m"),
        _workload.format_line(1, 9, 1, "m"),  # beyond what was promised: accepted once
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    verdict = _workload.verify_files([str(path)], [3, 2])
    assert (verdict.lines, verdict.lost, verdict.duplicated, verdict.corrupt) == (8, 2, 1, 3)
    assert verdict.delivered == 3
    assert not verdict.ok


@pytest.mark.timeout(60)
def test_compare_prints_every_alternative_and_ours_verify(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--compare runs each naive alternative, bounded, next to logexec; logexec's rows are ok."""
    # The recipe may hang (that is the point); keep its bounded waits short here.
    monkeypatch.setattr(_compare, "GRACE_SECONDS", 1.0)
    argv = [
        "demo",
        "--records",
        "200",
        "--workers",
        "2",
        "--start-method",
        "fork",
        "--out",
        str(tmp_path / "o"),
    ]
    status = main([*argv, "--compare", "--compare-records", "300"])
    captured = capsys.readouterr()
    assert status == 0, captured.out
    assert "comparison: 300 records" in captured.out
    rows = {}
    for line in captured.out.splitlines():
        for _, label in _compare.ALTERNATIVES:
            if line.strip().startswith(label + " "):
                rows[label] = line
    assert set(rows) == {label for _, label in _compare.ALTERNATIVES}
    assert re.search(r"^\s*logexec\s+300\s+0\s+0\s+0\s.*\sok$", rows["logexec"]), rows["logexec"]
    killed = rows["logexec, worker SIGKILLed"]
    assert re.search(r"\s0\s+0\s+0\s.*\sok; pool broken, as expected$", killed), killed
    for _, label in _compare.ALTERNATIVES:
        assert f"compare: running {label} ..." in captured.err


@pytest.mark.timeout(20)
def test_compare_kills_an_alternative_that_overruns() -> None:
    """An alternative that does not report in time is killed, with its workers, and shown as hung."""
    outcome = _compare.run_child("queue-killed", 100, 2, "fork", timeout=0.01)
    assert outcome.hung == "no report, killed after 0.01 s"
    assert _compare.outcome_status(outcome).startswith("HUNG")


@pytest.mark.timeout(20)
def test_compare_reports_an_alternative_that_crashes() -> None:
    """An alternative that fails is reported as FAILED with the last line of its error."""
    outcome = _compare.run_child("no-such-alternative", 100, 2, "fork")
    assert outcome.note.startswith("failed (exit 1): KeyError")
    assert _compare.outcome_status(outcome) == "FAILED"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["demo", "--records", "-5"], "argument --records: must be at least 1, got -5"),
        (["demo", "--records", "many"], "argument --records: must be an integer, got 'many'"),
        (["demo", "--compare-records", "0"], "argument --compare-records: must be at least 1, got 0"),
        (["demo", "--start-method", "thread"], "argument --start-method: invalid choice: 'thread'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (
            ["demo", "--out", "/nonexistent/dir/out.jsonl"],
            "argument --out: cannot write '/nonexistent/dir/out.jsonl'",
        ),
    ],
)
def test_bad_options_exit_2_with_argparse_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option is argparse's usual error naming the rule and the value, exit status 2."""
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(10)
def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --help` documents each option and exits 0."""
    with pytest.raises(SystemExit) as raised:
        main(["demo", "--help"])
    assert raised.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--workers", "--records", "--start-method", "--out", "--compare", "--compare-records"):
        assert option in shown
    assert "default: 200000" in shown


@pytest.mark.timeout(30)
def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m logexec` without a command prints the help and exits 2, in process and as a command."""
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err
    completed = subprocess.run(
        [sys.executable, "-m", "logexec"], check=False, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 2
    assert "usage: python -m logexec" in completed.stderr
