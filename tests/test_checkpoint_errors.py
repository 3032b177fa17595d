"""Bad checkpoints give one clear error naming the file and the fix, never a deep torch traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
import yaml
from upstream_reference import tiny_fields, write_upstream_checkpoint

from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.checkpoint import OmniModel, convert_upstream


@pytest.fixture
def upstream(tmp_path):
    directory = tmp_path / "up"
    write_upstream_checkpoint(directory, tiny_fields())
    return directory


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        OmniModel.from_pretrained(tmp_path / "nope")
    assert "omnivox download" in str(err.value)


def test_directory_without_weights(tmp_path):
    (tmp_path / "model_config.yaml").write_text("n_layer: 1\n")
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        OmniModel.from_pretrained(tmp_path)


def test_missing_config(upstream):
    (upstream / "model_config.yaml").unlink()
    with pytest.raises(CheckpointError, match="model_config.yaml not found"):
        OmniModel.from_pretrained(upstream)


def test_unknown_config_field(upstream):
    cfg = yaml.safe_load((upstream / "model_config.yaml").read_text())
    cfg["n_laeyr"] = 3
    (upstream / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="unknown field.*n_laeyr") as err:
        OmniModel.from_pretrained(upstream)
    assert "model_config.yaml" in str(err.value) and "valid fields" in str(err.value)


def test_missing_config_field(upstream):
    cfg = yaml.safe_load((upstream / "model_config.yaml").read_text())
    del cfg["n_embd"]
    (upstream / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="missing required field.*n_embd"):
        OmniModel.from_pretrained(upstream)


def test_wrongly_typed_config_field(upstream):
    cfg = yaml.safe_load((upstream / "model_config.yaml").read_text())
    cfg["n_head"] = "four"
    (upstream / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="'n_head' should be int"):
        OmniModel.from_pretrained(upstream)


def test_unsupported_architecture_field(upstream):
    cfg = yaml.safe_load((upstream / "model_config.yaml").read_text())
    cfg["parallel_residual"] = True
    (upstream / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="parallel_residual"):
        OmniModel.from_pretrained(upstream)


def _rewrite_weights(directory, edit):
    sd = torch.load(directory / "lit_model.pth", weights_only=True)
    edit(sd)
    torch.save(sd, directory / "lit_model.pth")


def test_missing_tensor(upstream):
    _rewrite_weights(upstream, lambda sd: sd.pop("transformer.h.1.mlp.proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing: transformer\.h\.1\.mlp\.proj\.weight") as err:
        OmniModel.from_pretrained(upstream)
    assert "lit_model.pth" in str(err.value)


def test_unexpected_tensor(upstream):
    _rewrite_weights(upstream, lambda sd: sd.__setitem__("transformer.h.9.extra", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected: transformer\.h\.9\.extra"):
        OmniModel.from_pretrained(upstream)


def test_misshaped_tensor(upstream):
    _rewrite_weights(upstream, lambda sd: sd.__setitem__("lm_head.weight", torch.zeros(10, 64)))
    with pytest.raises(CheckpointError, match=r"mis-shaped: lm_head\.weight \(10, 64\)"):
        OmniModel.from_pretrained(upstream)


def test_misshaped_fused_qkv_names_upstream_key(upstream):
    _rewrite_weights(upstream, lambda sd: sd.__setitem__("transformer.h.0.attn.attn.weight", torch.zeros(96, 64)))
    with pytest.raises(CheckpointError, match=r"mis-shaped: transformer\.h\.0\.attn\.attn\.weight \(96, 64\)"):
        OmniModel.from_pretrained(upstream)


def test_pickle_that_is_not_a_state_dict(upstream):
    torch.save({"weights": [1, 2, 3]}, upstream / "lit_model.pth")
    with pytest.raises(CheckpointError, match="not a state dict of tensors|not a readable"):
        OmniModel.from_pretrained(upstream)


def test_arbitrary_pickle_is_refused(upstream):
    (upstream / "lit_model.pth").write_bytes(pickle.dumps(object()))
    with pytest.raises(CheckpointError, match="lit_model.pth is not a readable PyTorch state dict"):
        OmniModel.from_pretrained(upstream)


def test_garbage_file(upstream):
    (upstream / "lit_model.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        OmniModel.from_pretrained(upstream)


def test_convert_cli_round_trip(upstream, tmp_path):
    dst = tmp_path / "native"
    command = [sys.executable, "-m", "omnivox.cli.main", "convert", "mini-omni", str(upstream), str(dst)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    a, b = OmniModel.from_pretrained(upstream), OmniModel.from_pretrained(dst)
    assert all(torch.equal(a.lm.state_dict()[k], b.lm.state_dict()[k]) for k in a.lm.state_dict())
    assert (dst / "tokenizer.json").is_file()


def test_convert_cli_error_is_one_line_not_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "convert", "mini-omni", str(tmp_path / "x"),
                          str(tmp_path / "y")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "not found" in run.stderr and "fix:" in run.stderr


def test_download_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "download", "mini-omni", str(tmp_path / "d")],
                         capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2
    assert "could not download gpt-omni/mini-omni" in run.stderr and "--checkpoint" in run.stderr


def test_convert_refuses_same_directory(upstream):
    with pytest.raises(CheckpointError, match="same directory"):
        convert_upstream(upstream, upstream)

