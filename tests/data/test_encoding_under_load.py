"""Video encoding never hangs: SVT-AV1 once deadlocked (CPU idle, forever) while the cores were busy."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from smolvla.data import video as video_module
from smolvla.data.video import VideoEncoder, VideoEncoderHangError

ENCODE_UNDER_LOAD = """
import sys, numpy as np
from smolvla.data.video import VideoEncoder
rng = np.random.default_rng(0)
for i in range(12):  # 12 files x 40 frames, as a collection writes them, while the cores are busy
    encoder = VideoEncoder(f"{sys.argv[1]}/{i}.mp4", fps=30, width=48, height=32)
    for _ in range(4):
        encoder.add(rng.integers(0, 256, (10, 32, 48, 3), dtype=np.uint8))
    encoder.close()
print("done")
"""
BUSY = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"


def test_av1_encoding_under_cpu_load_finishes_within_budget(tmp_path):
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
    try:
        done = subprocess.run([sys.executable, "-c", ENCODE_UNDER_LOAD, str(tmp_path)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
    assert len(list(tmp_path.glob("*.mp4"))) == 12


def test_a_stalled_codec_call_raises_instead_of_hanging(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(VideoEncoder, "_encode", lambda self, frames: release.wait(30))
    encoder = VideoEncoder(tmp_path / "x.mp4", fps=10, width=16, height=16, stall_timeout_s=0.5)
    try:
        with pytest.raises(VideoEncoderHangError, match=r"made no progress for 0\.5 s while encoding 3 frames"):
            encoder.add(np.zeros((3, 16, 16, 3), np.uint8))
        with pytest.raises(VideoEncoderHangError, match="hung earlier"):  # never touched again
            encoder.close()
    finally:
        release.set()
    assert video_module.STALL_TIMEOUT_S >= 60  # the default leaves real encodes ample time
