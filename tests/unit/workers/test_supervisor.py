"""The supervisor's pure parts: when an exited worker is started again, and the check that
nothing listens on the listen address yet. The process side (fork, signals, restarts) is
tests/integration/test_workers.py."""

from __future__ import annotations

import socket

import pytest

from pyproxy.cli import _build_parser
from pyproxy.config.model import Address
from pyproxy.workers.supervisor import RestartPolicy, check_listen_address


def test_quick_exits_back_off_then_give_up():
    policy = RestartPolicy(quick=5.0, first_delay=0.25, max_delay=2.0, max_quick_exits=5)
    assert [policy.after_exit(1, uptime=0.1) for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, None]
    assert policy.quick_exits(1) == 5


def test_a_worker_that_ran_a_while_starts_again_promptly_and_its_count_resets():
    policy = RestartPolicy(quick=5.0, first_delay=0.25, max_quick_exits=3)
    assert policy.after_exit(0, uptime=0.1) == 0.25
    assert policy.after_exit(0, uptime=0.1) == 0.5
    assert policy.after_exit(0, uptime=3600) == 0.25  # crashed after an hour: not a crash loop
    assert policy.quick_exits(0) == 0
    assert policy.after_exit(0, uptime=0.1) == 0.25
    assert policy.after_exit(1, uptime=0.1) == 0.25  # each worker counts its own


def test_the_listen_check_resolves_port_zero_and_refuses_a_taken_address():
    address = check_listen_address(Address("127.0.0.1", 0))
    assert address.host == "127.0.0.1" and address.port > 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            check_listen_address(Address("127.0.0.1", taken.getsockname()[1]))


@pytest.mark.parametrize("given, count", [("3", 3), ("1", 1)])
def test_workers_option(given, count):
    assert _build_parser().parse_args(["run", "--workers", given]).workers == count


@pytest.mark.parametrize("given", ["0", "auto"])
def test_workers_zero_or_auto_is_one_per_cpu(given):
    import os

    assert _build_parser().parse_args(["run", "--workers", given]).workers == \
        len(os.sched_getaffinity(0))


def test_workers_must_be_a_count(capsys):
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["run", "--workers", "-2"])
    assert "expected a number of processes" in capsys.readouterr().err


def test_an_unusable_state_dir_is_refused_before_anything_starts(tmp_path, capsys):
    from pyproxy.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "-c", str(tmp_path), "--state-dir", str(blocker / "state")]) == 2
    assert "cannot keep state in" in capsys.readouterr().err
