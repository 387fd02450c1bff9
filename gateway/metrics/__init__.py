"""Metrics of the gateway, through prometheus_client in multiprocess mode.

- `directory`: the stack's multiprocess directory, made by the gateway's main process and
  handed to its HTTP servers (`drop` removes it after a gateway that was killed);
- `recorder`: what each server records per request (duration, status, per endpoint);
- `service`: the broker's `stats` and `health` answers as metric families;
- `exposition`: the `/metrics` text summed over every server, and the servers that serve.

Only `directory` is imported here: the others import prometheus_client, which must not be
imported before PROMETHEUS_MULTIPROC_DIR is set (in a server, it is set at spawn).
"""

from gateway.metrics.directory import drop

__all__ = ["drop"]
