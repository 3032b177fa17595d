"""core/config_check.py: the one checker of YAML parameters, used by pipelines and training recipes alike."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from omnivox.core import config_check
from omnivox.core.config_check import Key, check_keys, check_params, signature_of
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import ConfigError
from omnivox.core.runtime import pipeline
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.training import recipe


class Gate(Stage):
    """A VAD for the pipeline, and a `_component_` for a recipe (tests/ is importable as a path)."""

    def __init__(self, threshold: float = 0.5, mode: Literal["energy", "always"] = "energy"):
        super().__init__()


class GatePlugin:
    @hookimpl
    def register_vad(self, registry):
        registry.add("gate", Gate)


def _pipeline_error(params: dict) -> ConfigError:
    manager = PluginManager(load="")
    manager.pm.register(GatePlugin(), name="gate")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_config({"stages": [{"plugin": "vad/gate", "params": params}]}, plugins=manager)
    return info.value


def _recipe_error(params: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        recipe.check_component({"_component_": "test_config_check.Gate", **params}, "r.yaml: data", None, ())
    return info.value


@pytest.mark.parametrize("params, problem", [
    ({"threshhold": 0.6}, "threshhold: unknown parameter of {label} (did you mean 'threshold'?)"),
    ({"threshold": "high"}, "threshold: expected float, got str 'high'"),
    ({"mode": "loud"}, "mode: expected Literal['energy', 'always'], got str 'loud'"),
])  # fmt: skip
def test_a_pipeline_and_a_recipe_report_the_same_mistake_the_same_way(params, problem):
    """One checker: the same bad parameter gives the same problem (at its own place) and the same fix."""
    in_pipeline, in_recipe = _pipeline_error(params), _recipe_error(params)
    assert in_pipeline.problem == "stages[0].params." + problem.format(label="vad/gate")
    assert in_recipe.problem == "r.yaml: data." + problem.format(label="test_config_check.Gate")
    assert in_pipeline.fix == in_recipe.fix
    assert recipe.check_params is pipeline.check_params is config_check.check_params


def _factory(path: Path, size: int, ratio: float = 1.0, pair: tuple[int, int] = (0, 0), *, items: list | None = None):
    return path, size, ratio, pair, items


def test_check_params_converts_what_yaml_cannot_write_and_names_what_is_missing():
    checked = check_params("x", "f", _factory, {"path": "a.wav", "size": 3, "ratio": 2, "pair": [1, 2]})
    assert checked == {"path": Path("a.wav"), "size": 3, "ratio": 2, "pair": (1, 2)}
    assert check_params("x", "f", _factory, {"size": 1}, skip=("path",)) == {"size": 1}
    with pytest.raises(ConfigError, match=r"x: missing parameter 'size' of f") as info:
        check_params("x", "f", _factory, {"path": "a"}, also="more: m")
    assert info.value.fix.startswith("add `size: ...`; valid parameters: path (Path), size (int), ratio (float) = 1.0")
    assert info.value.fix.endswith("; more: m")
    with pytest.raises(ConfigError, match=r"x\.size: expected int, got bool True"):
        check_params("x", "f", _factory, {"path": "a", "size": True})
    with pytest.raises(ConfigError, match=r"x\.path: unknown parameter of f"):  # skipped: the caller passes it
        check_params("x", "f", _factory, {"path": "a", "size": 1}, skip=("path",))


def test_open_ended_and_uninspectable_factories_take_any_parameter():
    def open_ended(a: int, **rest):
        return a

    assert check_params("x", "f", open_ended, {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert signature_of(open_ended, skip=("a",)).describe() == "(none)"
    assert check_params("x", "f", max, {"anything": 1}) == {"anything": 1}


def test_check_keys_names_the_key_and_the_valid_choices():
    schema = {"stages": Key((list,), required=True, help="list of stages"), "mode": Key((str,), choices=("a", "b"))}
    check_keys("", {"stages": [], "mode": "a"}, schema)
    cases = [
        ({"stagez": []}, "stagez: unknown key (did you mean 'stages'?)", "valid keys: stages, mode"),
        ({}, "top level: missing key 'stages' (list of stages)", "add `stages:`"),
        ({"stages": 1}, "stages: expected list, got int 1", "stages is the list of stages"),
        ({"stages": [], "mode": "c"}, "mode: 'c' is not a valid choice", "use one of: a, b"),
        ([], "top level: expected a mapping, got list", "keys: stages, mode"),
    ]
    for mapping, problem, fix in cases:
        with pytest.raises(ConfigError) as info:
            check_keys("", mapping, schema)
        assert info.value.problem == problem and fix in info.value.fix
