"""The speech kit (core/runtime/speech_kit.py): a model with the encoder and codec it was trained with, checked to
fit; the pairings come from what the plugins declare (a model's `components`, a codec's `loads` and `exports`,
Mini-Omni's own components), never from names in core."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from omnivox.core.contracts import manager as plugins
from omnivox.core.contracts.codec import TokenGrid, depth_first_slots
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.speech_kit import (
    COMPONENTS_FILE,
    DEFAULT_NOTICE,
    NOTICE,
    RANDOM_MODEL,
    SpeechKit,
    components_in,
)
from omnivox.plugins.random_models import TINY_WHISPER_DIMS

# a SNAC with 3 codebooks of 4096 (7 slots, like the 24 kHz model) but tiny layers
TINY_SNAC = {"sampling_rate": 8000, "encoder_dim": 4, "encoder_rates": [2, 2], "decoder_dim": 16,
             "decoder_rates": [2, 2], "attn_window_size": None, "codebook_size": 4096, "codebook_dim": 4,
             "vq_strides": [4, 2, 1], "noise": True, "depthwise": True}
SEVEN_SLOTS = TokenGrid(n_codebooks=3, codebook_size=4096, frame_rate=12.5, sample_rate=8000,
                        slots=depth_first_slots([4, 2, 1]))


@pytest.fixture
def export(tmp_path):
    """A native export of the tiny random model whose components.json names a tiny Whisper and a tiny SNAC."""
    directory = tmp_path / "export"
    SpeechKit.load_model(RANDOM_MODEL).save_pretrained(directory)
    record = {"encoder": {"name": "whisper", "params": {"dims": TINY_WHISPER_DIMS, "seed": 0}},
              "codec": {"name": "snac", "params": {"config": TINY_SNAC, "seed": 0}}}
    (directory / COMPONENTS_FILE).write_text(json.dumps(record))
    return directory


class ToyCodec:
    """A codec of the 7 x 4096 grid that loads a directory holding toy.bin."""

    grid = SEVEN_SLOTS

    def __init__(self, model: str):
        self.model = model


class ToyPlugin:
    @hookimpl
    def register_codecs(self, registry):
        registry.add("toy", ToyCodec, loads=lambda value: (Path(value) / "toy.bin").is_file(),
                     exports=lambda params, directory: {**params, "model": str(directory)})


@pytest.fixture
def with_toy():
    """The default plugin manager with the toy codec plugin registered too (reset after)."""
    plugins.reset_plugin_manager()
    plugins.get_plugin_manager().pm.register(ToyPlugin(), name="toy")
    yield
    plugins.reset_plugin_manager()


def test_a_checkpoint_directory_comes_with_its_recorded_components(export):
    said = []
    kit = SpeechKit.load(str(export), say=said.append)
    assert said == []  # the model named is the one that runs
    assert kit.encoder.feature_dim == TINY_WHISPER_DIMS["n_audio_state"] and kit.codec.grid.n_slots == 7
    assert kit.max_steps == 600
    assert kit.components["codec"]["where"] == f"recorded in {export / COMPONENTS_FILE}"
    assert not hasattr(kit.model, "components")  # the kit holds the record, not the model
    assert SpeechKit.components_of(str(export)).keys() == {"encoder", "codec"}  # without loading the weights


def test_the_random_kit_is_what_tiny_random_declares():
    kit = SpeechKit.random(seed=1)
    assert kit.model.source.startswith("random") and kit.max_steps == 96
    assert kit.encoder.feature_dim == TINY_WHISPER_DIMS["n_audio_state"]
    assert (kit.codec.grid.n_slots, kit.codec.grid.codebook_size) == (7, 4096)
    assert kit.components["codec"]["where"].startswith("declared by the model 'tiny-random'")
    said = []
    SpeechKit.load("random", hear=False, speak=False, say=said.append)
    assert said == [NOTICE]


def test_no_checkpoint_is_the_shipped_demo_model_said_so():
    from omnivox.plugins.demo_model import DEMO_DIR, missing_files

    if missing_files():
        pytest.skip(f"the shipped demo model is not in the package: {missing_files()[0]} is missing")
    said = []
    kit = SpeechKit.load(None, hear=False, speak=False, say=said.append)
    assert said == [DEFAULT_NOTICE] and kit.max_steps == 600
    assert kit.components["codec"]["where"] == f"recorded in {DEMO_DIR / COMPONENTS_FILE}"


def test_an_encoder_or_codec_that_does_not_fit_the_model_is_refused():
    model = SpeechKit.load_model(RANDOM_MODEL)
    with pytest.raises(ConfigError, match="the encoder gives 32-d features but the model's adapter takes 64") as error:
        SpeechKit(model, SimpleNamespace(feature_dim=32), SimpleNamespace(grid=SEVEN_SLOTS))
    assert "--encoder" in error.value.fix
    three = TokenGrid(n_codebooks=3, codebook_size=4096, frame_rate=12.5, sample_rate=8000,
                      slots=((0, 0), (1, 0), (2, 0)))
    with pytest.raises(ConfigError, match="the codec has 3 slots of 4096 codes but the model has 7 audio streams"):
        SpeechKit(model, codec=SimpleNamespace(grid=three))


def test_a_bare_codec_directory_goes_to_the_plugin_that_loads_it(with_toy, tmp_path):
    toy_dir = tmp_path / "toy"
    toy_dir.mkdir()
    (toy_dir / "toy.bin").write_bytes(b"")
    kit = SpeechKit.load("random", codec=str(toy_dir), hear=False, say=lambda line: None)
    assert isinstance(kit.codec, ToyCodec) and kit.codec.model == str(toy_dir)
    with pytest.raises(ConfigError, match="no codec plugin loads"):  # neither toy nor SNAC loads an empty dir
        SpeechKit.load("random", codec=str(tmp_path), hear=False, say=lambda line: None)


def test_an_export_records_what_the_codec_declares_it_wrote(with_toy, tmp_path):
    from omnivox.training.export import export_codec

    assert export_codec({"prepare": {"codec": {"_component_": "toy", "model": "x"}}}, tmp_path) == tmp_path / "codec"
    record = json.loads((tmp_path / COMPONENTS_FILE).read_text())
    assert record["codec"] == {"name": "toy", "params": {"model": "codec"}, "local": ["model"]}


def test_a_checkpoint_without_a_record_gets_the_components_plugins_declare_as_mini_omnis(export):
    (export / COMPONENTS_FILE).unlink()
    specs = components_in(export)
    assert specs["encoder"]["name"] == "whisper"
    assert specs["encoder"]["params"] == {"checkpoint": str(export / "small.pt")}
    assert (specs["codec"]["name"], specs["codec"]["params"]) == ("snac", {"model": "hubertsiuzdak/snac_24khz"})
    assert specs["codec"]["where"].startswith("Mini-Omni's default")
