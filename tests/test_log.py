"""geode.log: loggers that load logging only for records that pass the configured level.

Each case runs in a fresh interpreter, since pytest itself has imported logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from geode import log as geode_log


def run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=True)


def test_records_below_the_threshold_load_nothing() -> None:
    out = run_fresh("""
        import sys
        from geode.log import get_logger
        log = get_logger("geode.test")
        log.debug("d %s", 1); log.info("i")
        print("logging" in sys.modules, log.isEnabledFor(10))
        log.warning("w %d", 2)
        print("logging" in sys.modules)
    """)
    assert out.stdout.split() == ["False", "False", "True"]
    assert out.stderr == "w 2\n"  # logging's own last-resort handler: WARNING and up


def test_configuration_waits_for_the_first_record_and_runs_once_in_order() -> None:
    out = run_fresh("""
        import sys
        import geode.log as gl
        calls = []
        def first():
            import logging
            calls.append("first")
            h = logging.StreamHandler(sys.stdout)
            h.setFormatter(logging.Formatter("%(levelname)s %(name)s %(funcName)s: %(message)s"))
            logging.getLogger("geode").addHandler(h)
        def second():
            import logging
            calls.append("second")
            logging.getLogger("geode").setLevel(logging.DEBUG)
        gl.configure(gl.WARNING, first)
        gl.configure(gl.DEBUG, second)
        print(calls, "logging" in sys.modules, gl.threshold())
        def caller():
            gl.get_logger("geode.fs").debug("hello %s", "there")
        caller()
        gl.get_logger("geode.fs").info("again")
        print(calls)
    """)
    assert out.stdout.splitlines() == [
        "[] False 10",
        "DEBUG geode.fs caller: hello there",
        "INFO geode.fs <module>: again",
        "['first', 'second']",
    ]


def test_once_logging_is_loaded_everything_is_forwarded() -> None:
    out = run_fresh("""
        import logging, sys
        import geode.log as gl
        logging.basicConfig(stream=sys.stdout, level=logging.DEBUG,
                            format="%(levelname)s %(lineno)d %(message)s")
        ran = []
        gl.configure(gl.ERROR, lambda: ran.append(1))
        print(ran)
        log = gl.get_logger("geode.x")
        log.debug("visible because logging decides")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("failed")
    """)
    lines = out.stdout.splitlines()
    assert lines[0] == "[1]"
    assert lines[1] == "DEBUG 10 visible because logging decides"  # (the caller's line)
    assert lines[2] == "ERROR 14 failed"
    assert lines[-1] == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize("name", ["geode", "geode.fs", "other"])
def test_one_logger_per_name(name: str) -> None:
    assert geode_log.get_logger(name) is geode_log.get_logger(name)
    assert geode_log.get_logger(name).name == name
