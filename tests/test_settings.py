"""crscale.yaml is the one source of every default: crscale.config.get fails on a missing key."""

from __future__ import annotations

import ast
from pathlib import Path

import dask.config
import pytest

import crscale
from crscale import _validate, config
from crscale.errors import SettingsError

PACKAGE = Path(crscale.__file__).parent


def test_missing_key_is_a_settings_error_naming_it():
    with dask.config.set({"crscale.detect": {"model": "default"}}):
        with pytest.raises(SettingsError, match=r"crscale\.detect\.inpaint_method is not set"):
            config.get("detect.inpaint_method")
    assert config.get("detect.inpaint_method") == config.shipped("detect.inpaint_method")
    assert config.get("no.such.key", "given") == "given"
    with pytest.raises(SettingsError, match="no shipped default"):
        config.shipped("detect.no_such_key")


def test_no_code_side_fallback_for_a_setting():
    """No module of the package passes a default to config.get: the yaml holds them all."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "from crscale import" not in path.read_text() or " config" not in path.read_text():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "config" and (len(node.args) > 1 or node.keywords)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_validators_raise_settings_errors():
    assert _validate.threshold(0.5) == 0.5
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(SettingsError, match=r"threshold must lie in \[0, 1\]"):
            _validate.threshold(bad)
    with pytest.raises(SettingsError, match="backend must be one of"):
        _validate.one_of("gpu", ("auto", "torch", "numpy"), "backend")
    with pytest.raises(SettingsError, match="unknown inpainting method 'nearest'"):
        _validate.known("nearest", ("median", "harmonic"), "inpainting method")
