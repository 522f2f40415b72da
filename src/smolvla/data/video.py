"""Video and image codecs on PyAV: episode frames → mp4 (many episodes per file), timestamps → decoded frames.

Decoding is the bottleneck of training on video datasets, so the reader keeps every file it touched open (LRU),
remembers where its decoder stands, and for a request slightly ahead of that point keeps decoding forward instead of
seeking: sequential access decodes each frame exactly once. Random access seeks to the preceding keyframe; LeRobot
encodes with a keyframe every 2 frames (`g=2`) so that costs at most one extra frame.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from smolvla.errors import SmolVLAError

_INHERITED: list[Any] = []
# No single codec call (one episode's frames, or the final flush) takes this long on a working machine.
STALL_TIMEOUT_S = 120.0
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr at every file otherwise


class VideoError(SmolVLAError, ValueError):
    """A video or image file cannot be written, opened, or lacks a requested frame."""


class VideoEncoderHangError(VideoError):
    """The encoder made no progress within its watchdog's time: a known SVT-AV1 thread deadlock under load."""


@dataclass
class VideoSettings:
    """Encoder settings; the defaults are LeRobot's (AV1, yuv420p, keyframe every 2 frames, CRF 30)."""

    codec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: int = 2
    crf: int = 30
    preset: int | None = 10  # SVT-AV1 speed preset (higher = faster)

    def options(self, codec: str) -> dict[str, str]:
        """Encoder options for the codec actually used (the speed preset is SVT-AV1's numeric scale only)."""
        opts = {"g": str(self.g), "crf": str(self.crf)}
        if self.preset is not None and codec == "libsvtav1":
            opts["preset"] = str(self.preset)
        return opts


def available_codec(preferred: str) -> str:
    """`preferred` if this PyAV build can encode it, else libx264, else mpeg4 (always built in)."""
    for name in (preferred, "libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises UnknownCodecError / ValueError depending on version
            continue
    raise VideoError("PyAV has no usable video encoder")


class VideoEncoder:
    """Appends RGB frames (H, W, 3) uint8 to one mp4 at a fixed fps; frame n has timestamp n / fps.

    Every call into the codec runs under a watchdog: SVT-AV1 can deadlock inside `svt_av1_enc_send_picture` (a
    semaphore wait, CPU idle) when the machine is busy, which would hang `smolvla collect` or the demo forever
    without a word. A call that takes longer than `stall_timeout_s` raises `VideoEncoderHangError` instead (the
    stuck codec thread is abandoned); callers rewrite with another codec (`smolvla.sim.collect` does).
    """

    def __init__(
        self,
        path: str | Path,
        fps: int,
        width: int,
        height: int,
        settings: VideoSettings | None = None,
        stall_timeout_s: float | None = None,
    ):
        settings = settings or VideoSettings()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.codec = available_codec(settings.codec)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(self.codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = settings.pix_fmt
        self.stream.options = settings.options(self.codec)
        self.num_frames = 0
        self.bytes = 0  # encoded so far (the muxer may not have flushed it to disk yet)
        self.stall_timeout_s = STALL_TIMEOUT_S if stall_timeout_s is None else stall_timeout_s
        self.hung = False

    def _guarded(self, call: Callable[[], None], what: str) -> None:
        """Run one codec call in a helper thread and wait at most `stall_timeout_s` for it."""
        if self.hung:
            raise VideoEncoderHangError(f"{self.path}: the {self.codec} encoder hung earlier; it cannot be used")
        failure: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as e:
                failure.append(e)

        worker = threading.Thread(target=run, name="smolvla-video-encoder", daemon=True)
        worker.start()
        worker.join(self.stall_timeout_s)
        if worker.is_alive():
            self.hung = True
            raise VideoEncoderHangError(
                f"{self.path}: the {self.codec} encoder made no progress for {self.stall_timeout_s:g} s while "
                f"{what} (a known SVT-AV1 deadlock under load)"
            )
        if failure:
            raise failure[0]

    def add(self, frames: Iterable[np.ndarray]) -> None:
        frames = list(frames)
        self._guarded(lambda: self._encode(frames), f"encoding {len(frames)} frames")

    def _encode(self, frames: list[np.ndarray]) -> None:
        for frame in frames:
            if frame.shape != (self.stream.height, self.stream.width, 3) or frame.dtype != np.uint8:
                raise VideoError(
                    f"{self.path}: frames must be ({self.stream.height}, {self.stream.width}, 3) uint8, "
                    f"got {frame.shape} {frame.dtype}"
                )
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.num_frames
            for packet in self.stream.encode(video_frame):
                self.bytes += packet.size
                self.container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        def flush() -> None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()

        self._guarded(flush, "flushing")


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 image (LeRobot's storage of `image` features in parquet)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"))
    return b"".join(bytes(p) for p in packets)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """(H, W, 3) uint8 from encoded image bytes (PNG, JPEG, ...)."""
    for codec_name in ("png", "mjpeg"):
        try:
            frames = av.CodecContext.create(codec_name, "r").decode(av.Packet(data))
            if frames:
                return frames[0].to_ndarray(format="rgb24")
        except av.FFmpegError:
            continue
    raise VideoError(f"{where}: cannot decode image bytes (not PNG or JPEG)")


@dataclass
class _OpenVideo:
    container: Any
    stream: Any
    frames: Any = None  # the running decode iterator
    last_time: float = -1.0
    last_frame: np.ndarray | None = None


class VideoFrameReader:
    """Frames of mp4 files at given timestamps, with open files and decoder positions kept between calls.

    One instance per process (a DataLoader worker gets its own copy with nothing open: pickling drops the handles).
    """

    def __init__(self, tolerance_s: float = 1e-4, max_open: int = 32, max_forward_s: float = 2.0):
        self.tolerance_s = tolerance_s
        self.max_open = max_open
        self.max_forward_s = max_forward_s
        self._open: OrderedDict[Path, _OpenVideo] = OrderedDict()
        self._pid = os.getpid()
        self.seeks = 0
        self.decoded_frames = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def close(self) -> None:
        for video in self._open.values():
            video.container.close()
        self._open.clear()

    def _get(self, path: Path) -> _OpenVideo:
        if os.getpid() != self._pid:
            # A forked DataLoader worker must not use its parent's decoders, nor free them: their FFmpeg threads do
            # not exist in the child, and deallocating them there crashes. They are parked, never touched.
            _INHERITED.append(self._open)
            self._open, self._pid = OrderedDict(), os.getpid()
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        if not path.is_file():
            raise VideoError(f"video file {path} does not exist")
        try:
            container = av.open(str(path))
            stream = container.streams.video[0]
        except (av.FFmpegError, IndexError) as e:
            raise VideoError(f"cannot open video {path}: {e}") from e
        # One decoding thread: DataLoader workers give the parallelism, and FFmpeg thread pools do not survive fork.
        stream.codec_context.thread_count = 1
        self._open[path] = _OpenVideo(container, stream)
        if len(self._open) > self.max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.container.close()
        return self._open[path]

    def _seek(self, video: _OpenVideo, time_s: float) -> None:
        video.container.seek(int(time_s / video.stream.time_base), stream=video.stream, backward=True)
        video.frames = video.container.decode(video.stream)
        video.last_time, video.last_frame = -1.0, None
        self.seeks += 1

    def frame(self, path: str | Path, time_s: float) -> np.ndarray:
        """The (H, W, 3) uint8 frame shown at `time_s` seconds (within `tolerance_s`)."""
        path = Path(path)
        video = self._get(path)
        tol = self.tolerance_s
        if video.last_frame is not None and abs(video.last_time - time_s) <= tol:
            return video.last_frame
        ahead = video.frames is not None and video.last_time < time_s <= video.last_time + self.max_forward_s
        if not ahead:
            self._seek(video, time_s)
        try:
            for frame in video.frames:
                video.last_time = float(frame.pts * video.stream.time_base)
                self.decoded_frames += 1
                if video.last_time >= time_s - tol:
                    video.last_frame = frame.to_ndarray(format="rgb24")
                    break
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode {path} at {time_s:.4f}s: {e}") from e
        if video.last_frame is None or abs(video.last_time - time_s) > tol:
            found = "the end of the file" if video.last_frame is None else f"{video.last_time:.4f}s"
            video.frames = None
            raise VideoError(f"{path} has no frame at {time_s:.4f}s (±{tol}s); nearest decoded: {found}")
        return video.last_frame
