"""Image augmentation: each transform does what its name says, draws are a function of (seed, stream position)."""

import pytest
import torch

from smolvla.data import LeRobotDataset, MultiLeRobotDataset, WeightedDatasetSampler
from smolvla.data.augment import (
    AugmentedSamples,
    ImageAugmenter,
    ImageTransformsConfig,
    affine,
    brightness,
    contrast,
    hue,
    saturation,
    sharpness,
)
from smolvla.errors import ConfigError
from smolvla.train.config import TrainConfig
from smolvla.train.data import GlobalBatches
from smolvla.train.trainer import Trainer
from tests.data.builders import make_episodes, write_v30
from tests.train.test_trainer import dataset, flags  # noqa: F401  (dataset: a fixture)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(0))


def test_neutral_parameters_leave_the_image(image):
    for out in (brightness(image, 1.0), contrast(image, 1.0), saturation(image, 1.0), sharpness(image, 1.0),
                affine(image, 0.0, 0, 0)):  # fmt: skip
        assert torch.equal(out, image)
    torch.testing.assert_close(hue(image, 0.0), image, rtol=0, atol=1e-6)


def test_colour_transforms(image):
    gray = saturation(image, 0.0)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    flat = contrast(image, 0.0)
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))  # no contrast: one grey level
    assert torch.equal(brightness(image, 2.0), (2 * image).clamp(0, 1))
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    green = torch.zeros(3, 2, 2)
    green[1] = 1.0
    torch.testing.assert_close(hue(red, 1 / 3), green, rtol=0, atol=1e-6)  # a third of a turn: red → green
    torch.testing.assert_close(hue(hue(image, 0.1), -0.1), image, rtol=0, atol=1e-5)


def test_sharpness_blends_with_the_smoothed_interior(image):
    blurred = sharpness(image, 0.0)
    assert torch.equal(blurred[:, 0], image[:, 0]) and torch.equal(blurred[:, :, -1], image[:, :, -1])
    window = image[:, 4:7, 5:8]
    weights = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=torch.float32) / 13
    torch.testing.assert_close(blurred[:, 5, 6], (window * weights).sum(dim=(1, 2)))


def test_affine_shifts_and_rotates_pixels():
    dot = torch.zeros(1, 9, 9)
    dot[0, 4, 2] = 1.0
    assert affine(dot, 0.0, 3, 0)[0, 4, 5] == 1.0  # 3 pixels right
    assert affine(dot, 0.0, 0, -2)[0, 2, 2] == 1.0  # 2 pixels up
    turned = affine(dot, 90.0, 0, 0)
    assert turned.sum() == 1.0 and turned[0, 4, 4] == 0.0
    assert turned[0, 2, 4] == 1.0 or turned[0, 6, 4] == 1.0  # a quarter turn about the centre


def test_the_augmenter_draws_from_its_generator(image):
    augment = ImageAugmenter(ImageTransformsConfig(enable=True, max_num_transforms=2))
    a = augment(image, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(image, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(image, torch.Generator().manual_seed(2)))
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 1


def test_samples_are_augmented_by_seed_and_stream_position(tmp_path):
    root = write_v30(tmp_path / "ds", make_episodes())
    data = MultiLeRobotDataset([LeRobotDataset(root)])
    config = ImageTransformsConfig(enable=True)
    samples = AugmentedSamples(data, config, seed=7)
    plain = data[3]
    first = samples[(3, 10)]
    assert torch.equal(first["observation.images.top"], samples[(3, 10)]["observation.images.top"])
    assert not torch.equal(first["observation.images.top"], plain["observation.images.top"])
    assert not torch.equal(first["observation.images.top"], samples[(3, 11)]["observation.images.top"])
    assert not torch.equal(
        first["observation.images.top"], AugmentedSamples(data, config, 8)[(3, 10)]["observation.images.top"]
    )
    for key, value in plain.items():
        if not key.startswith("observation.images."):
            assert first[key] == value if isinstance(value, str) else torch.equal(first[key], value), key
    # One global stream: the positions two processes see are one process's, split; a resumed stream repeats them.
    sampler = WeightedDatasetSampler([len(data)], [1.0], seed=7)
    one = [pair for batch in GlobalBatches(sampler, 4, 0, 1, 0, 6, positions=True) for pair in batch]
    two = [pair for rank in (0, 1) for batch in GlobalBatches(sampler, 4, rank, 2, 0, 6, positions=True)
           for pair in batch]  # fmt: skip
    assert sorted(one, key=lambda p: p[1]) == sorted(two, key=lambda p: p[1])
    assert [p[1] for p in one] == list(range(24))
    resumed = [pair for batch in GlobalBatches(sampler, 4, 0, 1, 3, 6, positions=True) for pair in batch]
    assert resumed == one[12:]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"max_num_transforms": 0}, "max_num_transforms must be >= 1"),
     ({"tfs.hue.range": (-0.7, 0.1)}, r"hue.range must be within \[-0.5, 0.5\]"),
     ({"tfs.brightness.range": (1.2, 0.8)}, "brightness.range must be 0 <= low <= high"),
     ({"tfs.affine.translate": (1.5, 0.0)}, "affine.translate must be in"),
     ({"tfs.*.weight": 0.0}, "weight must be finite, >= 0 and not all 0")],
)  # fmt: skip
def test_bad_settings(change, message):
    config = ImageTransformsConfig(enable=True)
    ((path, value),) = change.items()
    if path == "tfs.*.weight":
        for name in ("brightness", "contrast", "saturation", "hue", "sharpness", "affine"):
            getattr(config.tfs, name).weight = value
    elif path.startswith("tfs."):
        _, name, field = path.split(".")
        setattr(getattr(config.tfs, name), field, value)
    else:
        setattr(config, path, value)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_the_trainer_augments_training_batches_only(dataset, tmp_path):  # noqa: F811
    trainer = Trainer(TrainConfig.from_flags(flags(dataset, tmp_path, "--dataset.image_transforms.enable=true")))
    augmented = next(iter(trainer._loader(0, 1)))
    indices = next(iter(trainer._loader(0, 1).batch_sampler))
    plain = [trainer.data.train[i] for i, _ in indices]
    for key in ("observation.images.top", "observation.images.wrist"):
        assert augmented[key].shape == (4, *plain[0][key].shape)
        assert all(not torch.equal(augmented[key][j], p[key]) for j, p in enumerate(plain))
    assert torch.equal(augmented["observation.state"], torch.stack([p["observation.state"] for p in plain]))
    assert torch.equal(next(iter(trainer._loader(0, 1)))["observation.images.top"], augmented["observation.images.top"])
    assert not isinstance(trainer.data.val, AugmentedSamples)  # the validation loss reads plain frames
