"""Asynchronous inference: a gRPC policy server and robot clients (typed messages, no pickle)."""
