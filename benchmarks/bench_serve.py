"""Policy server under load and under attack, on loopback.

    .venv/bin/python benchmarks/bench_serve.py [--policy DIR] [--clients 1,4,16] [--hz 30] [--duration 60]
        [--num_steps 10,1] [--fuzz 5000]

The server runs as `smolvla serve` in its own process (its own interpreter and cores, as in deployment); N client
threads each send an observation (two 64² cameras + state for the default policy) at `--hz` — the next one at the
next tick after the previous reply — for `--duration` seconds. Per setting: requests answered, errors, achieved rate
per client, round-trip p50/p99 and the server's own inference time and batch size. Then `--fuzz` random and mutated
messages (smolvla.serve.fuzz): status counts, unexpected statuses (INTERNAL/UNKNOWN), whether the server still
serves. Writes benchmarks/results/serve_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report

DEFAULT_POLICY = "outputs/reflow-bench/teacher/checkpoints/001800/pretrained_model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(policy: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "smolvla.cli", "serve", f"--policy_path={policy}",
                               f"--port={port}", "--threads=64", "--max_batch=16"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    line = server.stdout.readline()  # "serving ... on 127.0.0.1:PORT" once bound
    if "serving" not in line:
        server.kill()
        raise RuntimeError(f"server did not start: {line}{server.stdout.read()}")
    return server


def load(address: str, clients: int, hz: float, duration: float, num_steps: int) -> dict:
    import grpc

    from smolvla.serve.client import PolicyClient
    from smolvla.serve.fuzz import sample_observation

    info = PolicyClient(address=address).info()
    state, images = sample_observation(info)
    trips, server_ms, batch, errors = [], [], [], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def robot(i: int) -> None:
        client = PolicyClient(address=address, client_id=f"robot-{i}", retries=0)
        tick = time.perf_counter()
        while tick < stop_at:
            try:
                reply = client.predict(state, images, "open the window", num_steps=num_steps, seed=i + 1)
                with lock:
                    trips.append(reply.round_trip_ms)
                    server_ms.append(reply.timing["inference_ms"])
                    batch.append(reply.timing["batch_size"])
            except grpc.RpcError as e:
                with lock:
                    errors.append(e.code().name)
            tick = max(tick + 1 / hz, time.perf_counter())  # the next tick; no catching up after a slow reply
            time.sleep(max(0.0, tick - time.perf_counter()))
        client.close()

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients, "num_steps": num_steps, "answered": len(trips), "errors": len(errors),
        "hz_per_client": round(len(trips) / elapsed / clients, 1),
        "p50_ms": round(float(np.percentile(trips, 50)), 1), "p99_ms": round(float(np.percentile(trips, 99)), 1),
        "inference_ms": round(float(np.mean(server_ms)), 1), "mean_batch": round(float(np.mean(batch)), 2),
    }  # fmt: skip


def main() -> None:
    import torch

    from smolvla.serve import fuzz

    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default=DEFAULT_POLICY, help="a pretrained_model directory")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--num_steps", default="10,1")
    parser.add_argument("--fuzz", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2, help="server torch threads")
    args = parser.parse_args()
    if not Path(args.policy).is_dir():
        sys.exit(f"no policy at {args.policy}: run benchmarks/bench_reflow.py first or pass --policy")
    port = free_port()
    server = start_server(args.policy, port, args.threads)
    address = f"127.0.0.1:{port}"
    rows = []
    try:
        for steps in [int(n) for n in args.num_steps.split(",")]:
            for clients in [int(n) for n in args.clients.split(",")]:
                rows.append(load(address, clients, args.hz, args.duration, steps))
                print(rows[-1], flush=True)
        started = time.perf_counter()
        fuzzed = fuzz.run(address, args.fuzz, seed=0)
        fuzzed["seconds"] = round(time.perf_counter() - started, 1)
        fuzzed["server_alive"] = server.poll() is None
        print({k: v for k, v in fuzzed.items() if k != "unexpected"}, f"unexpected: {len(fuzzed['unexpected'])}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "server_threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "policy": args.policy,
        "hz": args.hz,
        "duration_s": args.duration,
        "fuzz": fuzzed,
    }
    columns = {
        "denoising steps": "num_steps", "clients": "clients", "answered": "answered", "errors": "errors",
        "Hz per client": "hz_per_client", "p50 ms": "p50_ms", "p99 ms": "p99_ms",
        "inference ms": "inference_ms", "mean batch": "mean_batch",
    }  # fmt: skip
    report(f"serve_{machine['device']}", machine, rows, columns)


if __name__ == "__main__":
    main()
