"""Policy server memory under large images and clients that give up mid-request.

    .venv/bin/python benchmarks/bench_serve_memory.py --policy DIR [--rounds 3] [--seconds 20] [--clients 8]
        [--side 1500] [--steps 100]

`smolvla serve` runs in its own process; `--clients` threads send observations with `--side`² camera frames at
`--steps` denoising steps, half of them abandoning each request after 50 ms (a robot whose deadline passed, a killed
client). After each round of `--seconds` and 3 idle seconds the server's resident memory is read from /proc: flat
across rounds means bounded (the allocator keeps its high-water mark), rising means requests are retained. Writes
benchmarks/results/serve_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from smolvla.serve import protocol as proto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_serve import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "serve_memory_cpu.json"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def request_bytes(address: str, side: int, steps: int) -> bytes:
    info = proto.PolicyInfo.FromString(
        grpc.insecure_channel(address).unary_unary(proto.INFO)(proto.InfoRequest().SerializeToString())
    )
    rng = np.random.default_rng(0)
    tensors = [
        proto.encode_tensor(f.name, rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        if f.dtype == "uint8"
        else proto.encode_tensor(f.name, rng.normal(size=list(f.shape)).astype(np.float32))
        for f in info.features
    ]
    observation = proto.Observation(tensors=tensors, task="open the drawer", timestep=1)
    return proto.PredictRequest(observation=observation, num_steps=steps, seed=1).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--side", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "smolvla.cli", "serve", f"--policy_path={args.policy}",
                               f"--port={port}", "--max_message_mb=64"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    print(server.stdout.readline().strip())
    payload = request_bytes(address, args.side, args.steps)
    rows, codes = [], {}
    idle = rss_mb(server.pid)
    print(f"request {len(payload) / 2**20:.1f} MiB; server idle {idle:.0f} MiB\n")
    print("| round | answered | gave up | refused busy | peak MiB | idle after MiB |\n|---|---|---|---|---|---|")

    def client(i: int, stop: float) -> None:
        channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)])
        call = channel.unary_unary(proto.PREDICT)
        while time.time() < stop:
            try:
                call(payload, timeout=0.05 if i % 2 else 10.0)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(0.05)  # back off, as PolicyClient users should
        channel.close()

    try:
        for r in range(args.rounds):
            stop = time.time() + args.seconds
            threads = [threading.Thread(target=client, args=(i, stop)) for i in range(args.clients)]
            for t in threads:
                t.start()
            peak = 0.0
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss_mb(server.pid))
                time.sleep(0.1)
            time.sleep(3)
            row = {"round": r + 1, **{k.lower(): v for k, v in codes.items()}, "peak_mb": round(peak),
                   "idle_after_mb": round(rss_mb(server.pid))}  # fmt: skip
            rows.append(row)
            print(f"| {r + 1} | {codes.get('OK', 0)} | {codes.get('DEADLINE_EXCEEDED', 0)} | "
                  f"{codes.get('RESOURCE_EXHAUSTED', 0)} | {row['peak_mb']} | {row['idle_after_mb']} |", flush=True)
    finally:
        server.terminate()
        server.wait()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpu": platform.processor(), "cores": os.cpu_count()}, "args": vars(args),
              "idle_start_mb": round(idle), "rounds": rows}  # fmt: skip
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
