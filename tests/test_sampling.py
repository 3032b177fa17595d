"""Sampling: greedy/top-k=1 are argmax, top-k and top-p restrict the support, temperature shapes the
distribution, a seed makes draws (and whole generations) reproducible, bad settings are refused."""

from __future__ import annotations

import pytest
import torch

from omnivox import generate
from omnivox.core.errors import ConfigError
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.sampling import SamplingConfig, sample

pytestmark = pytest.mark.usefixtures("single_thread")


LOGITS = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))


def draws(logits: torch.Tensor, config: SamplingConfig, n: int = 4000) -> torch.Tensor:
    """n draws from one row of logits."""
    generator = torch.Generator().manual_seed(1)
    return sample(logits.expand(n, -1), config, generator)


def test_greedy_and_top1_are_argmax():
    assert torch.equal(sample(LOGITS, SamplingConfig()), LOGITS.argmax(-1))
    upstream = SamplingConfig.upstream()  # temperature 0.9, top_k 1
    assert upstream.greedy and torch.equal(sample(LOGITS, upstream), LOGITS.argmax(-1))
    assert torch.equal(sample(LOGITS, SamplingConfig(temperature=5.0, top_k=1)), LOGITS.argmax(-1))


def test_top_k_limits_draws_to_the_k_most_likely():
    got = set(draws(LOGITS[0], SamplingConfig(temperature=3.0, top_k=3)).tolist())
    assert got == set(LOGITS[0].topk(3).indices.tolist())


@pytest.mark.parametrize("top_p, support", [(0.7, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, support):
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert set(draws(logits, SamplingConfig(temperature=1.0, top_p=top_p)).tolist()) == support


def test_temperature_follows_softmax_of_scaled_logits():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 2.0):
        got = torch.bincount(draws(logits, SamplingConfig(temperature=temperature)), minlength=4) / 4000
        assert (got - torch.softmax(logits / temperature, -1)).abs().max() < 0.03


def test_seed_makes_draws_reproducible():
    config = SamplingConfig(temperature=1.0, seed=7)
    first = sample(LOGITS.repeat(20, 1), config, config.generator("cpu"))
    again = sample(LOGITS.repeat(20, 1), config, config.generator("cpu"))
    other = SamplingConfig(temperature=1.0, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, sample(LOGITS.repeat(20, 1), other, other.generator("cpu")))
    assert SamplingConfig(seed=7).generator("cpu") is None  # greedy needs no randomness


def test_seeded_generation_is_reproducible():
    model = OmniModel.random(OmniConfig.tiny(), seed=2)
    features = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))

    def run(seed):
        return generate(model, task="A1A2", audio_features=features, max_steps=15,
                        sampling=SamplingConfig(temperature=1.0, top_p=0.95, seed=seed)).tokens

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SamplingConfig(**kwargs)
