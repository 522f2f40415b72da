"""`smolvla bench`: the measurement matrix, FLOP accounting, memory probe and bad flags."""

import json

import pytest
import torch

from smolvla import ConfigError
from smolvla.bench import BenchConfig, build_policy, count_flops, make_batch, peak_memory_mb, run_bench
from smolvla.cli import main


def test_tiny_matrix_writes_rows_with_consistent_flops(tmp_path):
    out = tmp_path / "model.json"
    config = BenchConfig(cameras=(1, 2), steps=(1, 3), reps=1, output=str(out))
    result = run_bench(config)
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert [(r["cameras"], r["mode"]) for r in rows] == [(1, "eager"), (2, "eager")]
    for row in rows:
        assert row["chunk_1_ms"] > 0 and row["chunk_3_ms"] > 0 and row["train_step_ms"] > 0
        assert 0 < row["chunk_pct_of_peak"] < 100 and 0 < row["train_pct_of_peak"] < 100
    assert rows[1]["chunk_gflop"] > rows[0]["chunk_gflop"]  # a second camera costs a second vision pass

    # the chunk FLOPs (derived from 1- and 2-step counts) equal a direct count of 3 steps
    policy = build_policy("tiny", 2, config.image_size, "cpu").eval()
    batch = make_batch(policy, 1, config.language_tokens, "cpu")
    direct = count_flops(lambda: policy.predict_chunk(batch, num_steps=3))
    assert rows[1]["chunk_gflop"] == pytest.approx(direct / 1e9, abs=1e-3)
    assert result["machine"]["threads"] == torch.get_num_threads()


def test_peak_memory_sees_a_large_allocation():
    def allocate():
        x = torch.ones(32 * 2**20)  # 128 MiB, touched
        return float(x[-1])

    assert peak_memory_mb(allocate, "cpu") >= 100
    assert peak_memory_mb(lambda: None, "cpu") < 50


def test_compiled_row_records_compile_time(tmp_path):
    config = BenchConfig(modes=("compiled",), steps=(1,), reps=1, train=False, output=str(tmp_path / "m.json"))
    (row,) = run_bench(config)["rows"]
    # The first call compiles, so it is slower than the timed ones whatever the machine's speed.
    assert row["compile_s"] > 0 and row["train_step_ms"] is None and row["chunk_1_ms"] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--presets=huge"], "unknown ['huge']"),
        (["--modes=jit"], "choose from eager, compiled, compiled_chunk"),
        (["--steps=0,10"], "--steps must be positive"),
        (["--image_size=96"], "--image_size must be height,width"),
    ],
)
def test_bad_flags_are_one_clear_error(flags, message, capsys):
    assert main(["bench", *flags]) == 2
    assert message in capsys.readouterr().err


def test_config_rejects_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        BenchConfig(device="cuda")
