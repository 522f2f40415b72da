"""Statistics: histogram image stats equal numpy's, pooled episode stats equal stats over all frames."""

import numpy as np

from smolvla.data.stats import QUANTILE_KEYS, QUANTILES, aggregate_stats, image_stats, vector_stats


def test_image_stats_match_numpy():
    frames = np.random.default_rng(0).integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
    frames[..., 2] //= 4  # a channel with a narrower range
    stats = image_stats(frames)
    pixels = frames.transpose(3, 0, 1, 2).reshape(3, -1) / 255.0
    expected = {"mean": pixels.mean(1), "std": pixels.std(1), "min": pixels.min(1), "max": pixels.max(1)}
    expected |= {k: np.quantile(pixels, q, axis=1) for k, q in zip(QUANTILE_KEYS, QUANTILES, strict=True)}
    for key, value in expected.items():
        assert stats[key].shape == (3, 1, 1)
        np.testing.assert_allclose(stats[key].ravel(), value, atol=1e-12, err_msg=key)
    assert stats["count"].tolist() == [7]


def test_pooled_stats_equal_global_moments():
    rng = np.random.default_rng(1)
    episodes = [rng.normal(loc=i, scale=1 + i, size=(n, 3)) for i, n in enumerate((5, 40, 17))]
    pooled = aggregate_stats([{"x": vector_stats(e)} for e in episodes])["x"]
    everything = np.concatenate(episodes)
    np.testing.assert_allclose(pooled["mean"], everything.mean(0))
    np.testing.assert_allclose(pooled["std"], everything.std(0))
    np.testing.assert_allclose(pooled["min"], everything.min(0))
    np.testing.assert_allclose(pooled["max"], everything.max(0))
    assert pooled["count"].tolist() == [62]
