"""Shared test setup: two cores (threads pinned, passive OpenMP waits) and small builders of policies and batches."""

import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No test may touch the network: hub ids resolve from a cache the tests fabricate, never from the developer's own.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="smolvla-test-hf-cache-")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

FIXTURES = Path(__file__).parent / "fixtures"
PARITY_DIR = FIXTURES / "lerobot_smolvla_parity" / "tiny"
PARITY_INPUTS = (
    "observation.images.top",
    "observation.images.wrist",
    "observation.state",
    "observation.language.tokens",
    "observation.language.attention_mask",
    "action",
    "action_is_pad",
)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test (fill it with `tests.hub_cache.cache_repo`), offline."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="session")
def parity_io() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(PARITY_DIR / "io.safetensors"))


@pytest.fixture(scope="session")
def parity_batch(parity_io) -> dict[str, torch.Tensor]:
    return {k: parity_io[k] for k in PARITY_INPUTS}


def make_batch(policy, batch_size: int = 2, seed: int = 0, lang_len: int = 6) -> dict[str, torch.Tensor]:
    """A random model-space batch matching the policy's configured features."""
    g = torch.Generator().manual_seed(seed)
    cfg = policy.config
    batch = {}
    for key, feat in cfg.image_features.items():
        if not key.startswith("observation.images.empty_camera_"):
            batch[key] = torch.rand(batch_size, *feat.shape, generator=g)
    batch["observation.state"] = torch.randn(batch_size, cfg.state_dim, generator=g)
    batch["observation.language.tokens"] = torch.randint(3, 400, (batch_size, lang_len), generator=g)
    mask = torch.ones(batch_size, lang_len, dtype=torch.bool)
    mask[0, lang_len // 2 :] = False
    batch["observation.language.attention_mask"] = mask
    batch["action"] = torch.randn(batch_size, cfg.chunk_size, cfg.action_dim, generator=g)
    is_pad = torch.zeros(batch_size, cfg.chunk_size, dtype=torch.bool)
    is_pad[-1, cfg.chunk_size // 2 :] = True
    batch["action_is_pad"] = is_pad
    return batch
