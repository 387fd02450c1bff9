"""Metrics of the gateway, through prometheus_client in multiprocess mode.

- `recorder`: what each server records per request (duration, status, per endpoint);
- `service`: the broker's `stats` and `health` answers as metric families;
- `exposition`: the `/metrics` text summed over every server, and the servers that serve.

The stack's multiprocess directory, made by the gateway's main process and handed to its
HTTP servers, is `featurestore.ops.metrics_dir` (the launcher and `serve` remove it after a
gateway that was killed). Nothing here is imported by this package's `__init__`: the modules
import prometheus_client, which must not be imported before PROMETHEUS_MULTIPROC_DIR is set
(in a server, it is set at spawn).
"""
