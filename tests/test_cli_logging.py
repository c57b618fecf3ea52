"""The CLI's console handler and its -v/-q options (the parser and the real logging module)."""

from __future__ import annotations

import logging

import pytest

from crscale.cli import build_parser, console_logging, main


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["info", "a.zarr"], logging.INFO),
        (["-q", "info", "a.zarr"], logging.WARNING),
        (["info", "a.zarr", "--quiet"], logging.WARNING),
        (["-v", "detect", "a.zarr"], logging.DEBUG),
        (["detect", "a.zarr", "--verbose"], logging.DEBUG),
        (["-q", "detect", "a.zarr", "-v"], logging.DEBUG),  # the subcommand's option is read last
    ],
)
def test_verbosity_options_set_the_console_level(argv, level):
    assert build_parser().parse_args(argv).log_level == level


def test_verbose_and_quiet_together_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["-v", "-q", "info", "a.zarr"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("level", "out", "err"),
    [
        (logging.INFO, "step done\n", "careful\n"),
        (logging.WARNING, "", "careful\n"),
        (logging.DEBUG, "details\nstep done\n", "careful\n"),
    ],
)
def test_console_logging_routes_by_level_and_restores_the_logger(capsys, level, out, err):
    logger = logging.getLogger("crscale.engine.example")
    root = logging.getLogger("crscale")
    before = (root.level, root.propagate, list(root.handlers))
    with console_logging(level):
        logger.debug("details")
        logger.info("step done")
        logger.warning("careful")
    logger.info("after the command: not shown by crscale's handler")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (out, err)
    assert (root.level, root.propagate, list(root.handlers)) == before


def test_main_runs_with_either_option(capsys):
    assert main(["-q", "sample-data"]) == 0 and main(["sample-data", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
