"""Plugin manager and `omnivox plugins`: a pip-installed third-party codec plugin is listed and buildable,
OMNIVOX_LOAD_PLUGINS limits loading, broken plugins are skipped with a named reason, names are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnivox.core.contracts import manager as plugins
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import PluginError

TOY_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "omnivox-toycodec"
version = "0.3.1"
dependencies = ["omnivox"]

[project.entry-points.omnivox]
toycodec = "omnivox_toycodec"
toybroken = "omnivox_toybroken"
whisper_encoder = "omnivox_toycodec"

[tool.setuptools]
py-modules = ["omnivox_toycodec", "omnivox_toybroken"]
"""

TOY_CODEC = '''
"""A third-party codec plugin: mu-law-ish toy codec with a fixed bit depth."""
from omnivox.core.contracts.hookspecs import hookimpl


class ToyCodec:
    def __init__(self, bits=8):
        self.bits = bits
        self.codebook_size = 2 ** bits


@hookimpl
def register_codecs(registry):
    registry.add("toycodec", ToyCodec, description="toy codec from a third-party package")
'''

TOY_BROKEN = """
import omnivox_toy_missing_dep  # a dependency that is not installed
"""


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """Build and pip-install the toy plugin package into a private target folder (the environment itself
    is untouched); the folder holds the modules and their .dist-info with the `omnivox` entry points."""
    root = tmp_path_factory.mktemp("toy")
    src = root / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(TOY_PYPROJECT)
    (src / "omnivox_toycodec.py").write_text(textwrap.dedent(TOY_CODEC))
    (src / "omnivox_toybroken.py").write_text(TOY_BROKEN)
    site = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(src),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert list(site.glob("omnivox_toycodec-0.3.1.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def with_toy(toy_site, monkeypatch):
    """The toy package importable in this process; plugin manager and imported toy modules reset after."""
    monkeypatch.syspath_prepend(str(toy_site))
    plugins.reset_plugin_manager()
    yield toy_site
    plugins.reset_plugin_manager()
    for name in ("omnivox_toycodec", "omnivox_toybroken"):
        sys.modules.pop(name, None)


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "omnivox.cli.main", "plugins", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_installed_third_party_codec_is_listed_and_built(with_toy):
    path = os.pathsep.join([str(with_toy), os.environ.get("PYTHONPATH", "")])
    done = run_cli("--json", env_extra={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    toy = info["loaded"]["toycodec"]
    assert toy["source"] == "omnivox-toycodec 0.3.1"
    assert toy["registers"] == {"codecs": {"toycodec": "toy codec from a third-party package"}}
    assert info["loaded"]["whisper_encoder"]["source"] == "built-in"  # not shadowed by the toy's entry point
    assert "taken" in info["skipped"]["whisper_encoder"]

    text = run_cli(env_extra={"PYTHONPATH": path}).stdout
    assert "toycodec [omnivox-toycodec 0.3.1]" in text
    assert "codecs: toycodec - toy codec from a third-party package" in text

    with pytest.warns(UserWarning, match="toybroken"):
        codec = plugins.create("codecs", "toycodec", bits=4)
    assert type(codec).__name__ == "ToyCodec" and codec.codebook_size == 16


def test_failed_import_is_skipped_naming_the_module(with_toy):
    with pytest.warns(UserWarning, match=r"omnivox plugin 'toybroken' skipped.*omnivox_toy_missing_dep"):
        manager = plugins.PluginManager(load="toybroken,toycodec")
    why = manager.skipped["toybroken"]
    assert why == (
        "missing module 'omnivox_toy_missing_dep': install the package that provides it (needed by omnivox-toycodec)"
    )
    assert [name for name, _ in manager.pm.list_name_plugin()] == ["toycodec"]


def test_builtin_with_missing_extra_is_skipped(tmp_path, monkeypatch):
    pkg = tmp_path / "fakevox"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mqtt_bridge.py").write_text("import omnivox_no_such_mqtt_lib\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", {"fakevox.mqtt_bridge": "mqtt", **plugins.BUILTIN_PLUGINS})
    with pytest.warns(UserWarning, match=r"'mqtt_bridge' skipped: missing module 'omnivox_no_such_mqtt_lib'"):
        manager = plugins.PluginManager(load="mqtt_bridge,whisper_encoder")
    assert "pip install 'omnivox[mqtt]'" in manager.skipped["mqtt_bridge"]
    assert manager.registry("encoders").get("whisper").plugin == "whisper_encoder"  # the rest still loads


def test_load_limit_from_environment(with_toy, monkeypatch):
    monkeypatch.setenv("OMNIVOX_LOAD_PLUGINS", "toycodec")
    manager = plugins.PluginManager()
    assert [name for name, _ in manager.pm.list_name_plugin()] == ["toycodec"]
    assert list(manager.registry("codecs").entries) == ["toycodec"]
    with pytest.raises(PluginError, match="unknown encoder 'whisper'"):
        manager.create("encoders", "whisper")

    monkeypatch.setenv("OMNIVOX_LOAD_PLUGINS", "")
    assert plugins.PluginManager().pm.list_name_plugin() == []


def test_load_limit_in_cli(with_toy):
    path = os.pathsep.join([str(with_toy), os.environ.get("PYTHONPATH", "")])
    done = run_cli("--json", env_extra={"PYTHONPATH": path, "OMNIVOX_LOAD_PLUGINS": "whisper_encoder"})
    info = json.loads(done.stdout)
    assert list(info["loaded"]) == ["whisper_encoder"] and info["load_limit"] == "whisper_encoder"


def test_unknown_name_lists_the_valid_ones():
    manager = plugins.PluginManager(load="whisper_encoder")
    with pytest.raises(PluginError) as err:
        manager.create("encoders", "whisperr")
    assert "unknown encoder 'whisperr'" in str(err.value) and "whisper" in err.value.fix
    with pytest.raises(PluginError, match="valid choices: .*codecs"):
        manager.registry("codec")


def test_wrong_parameter_is_reported_with_the_valid_ones():
    manager = plugins.PluginManager(load="whisper_encoder")
    with pytest.raises(PluginError, match="unexpected keyword argument 'ckpt'") as err:
        manager.create("encoders", "whisper", ckpt="small.pt")
    assert "checkpoint" in err.value.fix


class _CodecA:
    @hookimpl
    def register_codecs(self, registry):
        registry.add("same", object, description="first")


class _CodecB:
    @hookimpl
    def register_codecs(self, registry):
        registry.add("same", object, description="second")


def test_duplicate_names_are_an_error():
    manager = plugins.PluginManager(load="")
    manager.pm.register(_CodecA(), name="plugin_a")
    manager.pm.register(_CodecB(), name="plugin_b")
    with pytest.raises(PluginError, match="'same' registered twice .*plugin_a and plugin_b"):
        manager.registry("codecs")


def test_cli_lists_builtins_and_skipped():
    done = run_cli(env_extra={"OMNIVOX_LOAD_PLUGINS": "whisper_encoder,audio_files,no_such_plugin"})
    assert done.returncode == 0, done.stderr
    assert "whisper_encoder [built-in]" in done.stdout
    assert "encoders: whisper - openai-whisper audio encoder" in done.stdout
    assert "audio_files [built-in]\n    audio_inputs: file - one turn read from an audio file" in done.stdout
    assert "no_such_plugin: named in OMNIVOX_LOAD_PLUGINS, but no plugin has this name" in done.stdout
    assert "UserWarning" not in done.stderr
    assert "  lm - language model + decoding strategy\n    lm/omni - " in done.stdout  # the LM stage core provides
    assert "(strategy: a plugin of strategies)" in done.stdout and "  strategies - " not in done.stdout


def test_unknown_name_in_load_limit_is_reported(monkeypatch):
    monkeypatch.setenv("OMNIVOX_LOAD_PLUGINS", "whisper_encodr")
    with pytest.warns(UserWarning, match="'whisper_encodr' skipped: named in OMNIVOX_LOAD_PLUGINS"):
        manager = plugins.PluginManager()
    assert manager.pm.list_name_plugin() == []


def test_pipeline_config_selects_the_third_party_codec(with_toy):
    from omnivox.core.runtime import pipeline
    from omnivox.core.runtime.stage import Stage

    class CodecStage(Stage):
        def __init__(self, codec, name):
            super().__init__(name)
            self.codec = codec

    class ToyAdapter:  # the toy codec is no real Codec: a plugin replaces core's codecs adapter in this manager
        @hookimpl
        def register_stage_adapters(self, registry):
            registry.add("codecs", CodecStage)

    manager = plugins.PluginManager(load="toycodec")
    manager.pm.register(ToyAdapter(), name="toy_adapter")
    config = {"stages": [{"name": "vocoder", "plugin": "codecs/toycodec", "params": {"bits": 4}}]}
    built = pipeline.Pipeline.from_config(config, plugins=manager)
    (stage,) = built.stages
    assert stage.name == "vocoder" and type(stage.codec).__name__ == "ToyCodec" and stage.codec.bits == 4
