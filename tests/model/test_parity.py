"""Numerical parity with LeRobot 0.6.1's SmolVLA on the shared fixture (weights, inputs and outputs from LeRobot)."""

import json

import pytest
import torch

from smolvla import SmolVLAPolicy
from tests.conftest import FIXTURES, PARITY_DIR

ATOL = 1e-4  # the fixture README's float32 tolerance for losses, velocities and actions


@pytest.fixture(scope="module")
def policy():
    # The fixture directory is a LeRobot pretrained_model/ directory: it must load as is.
    return SmolVLAPolicy.from_pretrained(PARITY_DIR)


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def test_prepared_inputs_match(policy, parity_batch, parity_io):
    prefix = policy.prepare_observation(parity_batch)
    for i, cam in enumerate(("top", "wrist")):
        ref = parity_io[f"prepared_image.observation.images.{cam}"]
        assert _max_diff(prefix.images[i], ref) <= 1e-6
    assert torch.equal(torch.stack(prefix.image_masks, 1), parity_io["img_masks"])
    assert torch.equal(prefix.state, parity_io["state_padded"])
    actions, _ = policy.prepare_actions(parity_batch)
    assert torch.equal(actions, parity_io["actions_padded"])


def test_prefix_embeddings_match(policy, parity_batch, parity_io):
    embs, pads, flags = policy.model.embed_prefix(policy.prepare_observation(parity_batch))
    ref = parity_io["prefix_embs"]
    assert embs.shape == ref.shape
    assert _max_diff(embs, ref) <= 1e-5 * ref.abs().max().item()
    assert torch.equal(pads, parity_io["prefix_pad_masks"])
    assert torch.equal(flags, parity_io["prefix_att_masks"])


def test_training_path_matches(policy, parity_batch, parity_io):
    prefix = policy.prepare_observation(parity_batch)
    out = policy.model.losses(prefix, parity_io["actions_padded"], parity_io["noise"], parity_io["time"])
    assert torch.equal(out["x_t"], parity_io["x_t"])
    assert torch.equal(out["u_t"], parity_io["u_t"])
    assert _max_diff(out["v_t"], parity_io["v_t"]) <= ATOL
    assert _max_diff(out["losses_raw"], parity_io["losses_raw"]) <= ATOL


def test_reduced_losses_match(policy, parity_batch, parity_io):
    noise, time = parity_io["noise"], parity_io["time"]
    loss = policy.compute_loss(parity_batch, noise=noise, time=time)
    assert loss.shape == ()
    assert _max_diff(loss, parity_io["loss_mean"]) <= ATOL
    per_sample = policy.compute_loss(parity_batch, noise=noise, time=time, reduction="none")
    assert _max_diff(per_sample, parity_io["losses_none"]) <= ATOL


def test_sampling_matches(policy, parity_batch, parity_io):
    prefix = policy.prepare_observation(parity_batch)
    actions, velocities = policy.model.sample(prefix, parity_io["sample_noise"], 10, return_velocities=True)
    assert _max_diff(velocities, parity_io["sample_v_t"]) <= ATOL
    assert _max_diff(actions, parity_io["actions_sampled"]) <= ATOL
    chunk = policy.predict_chunk(parity_batch, noise=parity_io["sample_noise"])
    assert chunk.shape == parity_io["actions_chunk"].shape
    assert _max_diff(chunk, parity_io["actions_chunk"]) <= ATOL


def test_full_size_state_dict_matches_lerobot():
    ref = json.loads((FIXTURES / "lerobot_smolvla_parity" / "smolvla_base_state_dict.json").read_text())
    with torch.device("meta"):  # shapes only: no 1.8 GB allocation
        policy = SmolVLAPolicy.from_preset("smolvla_base")
    ours = {k: list(v.shape) for k, v in policy.state_dict().items()}
    assert ours == ref["tensors"]
    assert policy.num_parameters() == ref["total_params"]
    assert policy.num_parameters(trainable_only=True) == ref["trainable_params_default"]
