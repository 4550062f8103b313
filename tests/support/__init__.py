"""Shared test support: real etcd / NATS servers on free ports, and managed child processes."""
