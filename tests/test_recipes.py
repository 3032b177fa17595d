"""Every recipe YAML validates (keys, values, components, model config), the three stages keep the paper's
trainable maps and data, and recipe mistakes are named with the valid keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnivox.core.errors import ConfigError
from omnivox.training.recipe import DEFAULTS, load_recipe, model_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# the LM recipes (codec recipes: tests/test_mel_codec.py, tests/test_demo_domain.py)
ALL = sorted(p for p in RECIPES.glob("*.yaml") if "codec" not in p.stem and p.stem != "turn_end")  # OmniLM recipes
STREAMS = {"snac": 7, "mel": 8}  # audio streams a model needs for its recipe's codec
STAGES = {
    "stage1_alignment": ({"encoder": "frozen", "adapter": "full", "lm": "frozen", "heads": "frozen"},
                         {"A1T1", "T1A2"}),
    "stage2_adaption": ({"encoder": "frozen", "adapter": "frozen", "lm": "full", "heads": "full"}, {"A1T2"}),
    "stage3_finetune": ({"encoder": "frozen", "adapter": "full", "lm": "full", "heads": "full"}, {"A1A2"}),
}


def test_all_six_stage_recipes_exist():
    names = {p.stem for p in ALL}
    assert {s for s in STAGES} | {f"tiny_{s}" for s in STAGES} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    config = model_config(recipe["model"]["config"], recipe["model"]["overrides"])
    assert config.audio_streams == STREAMS[recipe["prepare"]["codec"]["_component_"]]
    assert recipe["strategy"] == "text-delay"
    assert recipe["data"]["_component_"] == "manifest"


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("prefix", ["", "tiny_"])
def test_stage_maps_and_tasks(stage, prefix):
    recipe = load_recipe(RECIPES / f"{prefix}{stage}.yaml")
    trainable, tasks = STAGES[stage]
    assert recipe["trainable"] == trainable
    assert set(recipe["data"]["tasks"]) == tasks


@pytest.mark.parametrize("prefix", ["", "tiny_"])
def test_stages_chain_through_init_from(prefix):
    s1, s2, s3 = (load_recipe(RECIPES / f"{prefix}{s}.yaml") for s in STAGES)
    assert s2["init_from"] == str(s1.export_dir) and s3["init_from"] == str(s2.export_dir)
    assert s1["model"] == s2["model"] == s3["model"]  # one model shape through the chain
    assert s1["prepare"] == s2["prepare"] == s3["prepare"]  # the same cached features and frames


def test_paper_scale_shapes():
    recipe = load_recipe(RECIPES / "stage1_alignment.yaml")
    config = model_config(recipe["model"]["config"], recipe["model"]["overrides"])
    assert (config.n_layer, config.n_embd, config.padded_vocab_size) == (24, 896, 181_120)
    assert config.post_adapter  # stage 1 trains both adapters (ASR + TTS)
    assert recipe["prepare"]["encoder"]["checkpoint"] == "small"
    assert "snac_24khz" in recipe["prepare"]["codec"]["model"]


def test_unknown_top_level_key_names_the_valid_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\noutput_dir: out\ntrainabel: {lm: full}\n")
    with pytest.raises(ConfigError, match="unknown recipe key 'trainabel'") as info:
        load_recipe(path)
    assert all(key in info.value.fix for key in DEFAULTS)


def test_unknown_nested_and_component_keys(tmp_path):
    tiny = RECIPES / "tiny_stage1_alignment.yaml"
    with pytest.raises(ConfigError, match=r"unknown recipe key 'training\.max_step'") as info:
        load_recipe(tiny, ["training.max_step=3"])
    assert "max_steps" in info.value.fix
    with pytest.raises(ConfigError, match=r"optimizer\.lrr: unknown parameter of torch\.optim\.AdamW") as info:
        load_recipe(tiny, ["optimizer.lrr=0.1"])
    assert "did you mean 'lr'" in info.value.problem
    assert "lr" in info.value.fix and "weight_decay" in info.value.fix
    with pytest.raises(ConfigError, match="unknown recipe key 'nme'"):
        load_recipe(tiny, ["nme=x"])
    with pytest.raises(ConfigError, match="scheduler: total_steps is set by the trainer"):
        load_recipe(tiny, ["scheduler.total_steps=3"])


def test_bad_values_are_named(tmp_path):
    tiny = RECIPES / "tiny_stage1_alignment.yaml"
    cases = {
        "trainable.lm=partial": "trainable.lm = 'partial'",
        "trainable.encoder=full": "encoder features are computed once",
        "training.distributed=zero3": "training.distributed = 'zero3'",
        "training.audio_noise=1.5": "training.audio_noise = 1.5",
        "strategy=7": "strategy = 7 is not a string",
        "data._component_=nonexistent": "unknown dataset 'nonexistent'",
        "optimizer._component_=torch.optim.NoSuchOpt": "torch.optim has no 'NoSuchOpt'",
        "loss.task_streams={T1A2: [video]}": "loss.task_streams.T1A2",
        "trainable={adapter: frozen, lm: frozen, heads: frozen}": "freezes everything",
    }
    for item, message in cases.items():
        with pytest.raises(Exception, match=message.replace(".", r"\.").replace("(", r"\(")) as info:
            load_recipe(tiny, [item])
        assert info.value.fix, item


def test_overrides_parse_yaml_values():
    recipe = load_recipe(RECIPES / "tiny_stage2_adaption.yaml",
                         ["training.max_steps=7", "init_from=null", "optimizer.lr=1e-3", "resume=auto"])
    assert recipe["training"]["max_steps"] == 7 and recipe["init_from"] is None
    assert recipe["optimizer"]["lr"] == 1e-3 and recipe["resume"] == "auto"
    with pytest.raises(ConfigError, match="is not key=value"):
        load_recipe(RECIPES / "tiny_stage2_adaption.yaml", ["training.max_steps"])
