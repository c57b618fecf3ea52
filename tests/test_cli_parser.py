"""The ``crscale`` parser: the choices it takes from the layers below stay those layers' own."""

from __future__ import annotations

from crscale.cli._args import inpaint_methods
from crscale.cli_reference import subcommands


def test_inpaint_choices_are_the_detection_layers():
    from crscale.cli import build_parser
    from crscale.detection.inpaint import INPAINT_METHODS

    assert inpaint_methods() == INPAINT_METHODS
    for name in ("detect", "run"):
        action = next(a for a in subcommands(build_parser())[name]._actions if a.dest == "inpaint_method")
        assert tuple(action.choices) == INPAINT_METHODS


def test_every_subcommand_has_a_handler():
    from crscale.cli import build_parser

    subs = subcommands(build_parser())
    assert len(subs) == 16
    assert all(callable(p.get_default("handler")) for p in subs.values())
