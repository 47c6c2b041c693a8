"""The stage's progress bar: drawn in place on a terminal, nothing in a pipe or a log file; on a
terminal the console drops the per-step lines it replaces (the log keeps them)."""

from __future__ import annotations

import io
import logging

from tasks.train.progress import STEP_LINE, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_redraws_one_line_on_a_terminal_and_nothing_elsewhere(monkeypatch):
    monkeypatch.delenv("VLMPIPE_PROGRESS", raising=False)
    tty = Terminal()
    bar = ProgressBar("stage4_multitask", 10, stream=tty)
    bar.min_interval_s = 0.0
    for step in range(1, 11):
        bar.update(step, 2.0 / step, 1234.0)
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 10 and text.endswith("\n") and text.count("\n") == 1
    last = text.rsplit("\r", 1)[1]
    assert "[########################] 10/10" in last and "loss 0.2000" in last and "1,234 tok/s" in last
    assert "eta 0m00s" in last

    pipe = io.StringIO()
    quiet = ProgressBar("s", 10, stream=pipe)
    quiet.update(5, 1.0)
    quiet.close()
    assert pipe.getvalue() == ""

    monkeypatch.setenv("VLMPIPE_PROGRESS", "0")
    off = Terminal()
    ProgressBar("s", 10, stream=off).update(10, 1.0)
    assert off.getvalue() == ""


def test_the_console_drops_step_lines_on_a_terminal_only(monkeypatch):
    import prefect  # noqa: F401 - sets its handlers up
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.environment import console_without_tracebacks

    monkeypatch.delenv("VLMPIPE_DEBUG", raising=False)
    monkeypatch.delenv("VLMPIPE_PROGRESS", raising=False)
    tty, pipe = Terminal(), io.StringIO()
    logger = logging.getLogger("vlmpipe-test-console")
    handlers = [PrefectConsoleHandler(stream=tty), PrefectConsoleHandler(stream=pipe)]
    for h in handlers:
        logger.addHandler(h)
    try:
        console_without_tracebacks()
        line = "stage4_multitask step 25/600 loss 1.2345 lr 3.00e-03 tok/s 900 data-wait 3.0% eta 4m10s"
        assert STEP_LINE.match(line)
        logger.warning(line)
        logger.warning("stage stage4_multitask: loss 4.1 -> 2.0; checkpoint /x")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        for h in handlers:
            logger.removeHandler(h)
    assert "step 25/600" not in tty.getvalue() and "checkpoint /x" in tty.getvalue()
    assert "step 25/600" in pipe.getvalue() and "checkpoint /x" in pipe.getvalue()
    assert "Traceback" not in tty.getvalue() + pipe.getvalue()
