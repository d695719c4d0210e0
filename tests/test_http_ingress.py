"""Why Serve's HAProxy ingress stays opt-in (`RAY_SERVE_ENABLE_HA_PROXY=1`) and Serve's gRPC ingress
is not offered, checked against Ray itself.

HAProxy answers several times faster than Serve's Python proxy
(`bench/results/serve.md`), but the config Ray renders for it cannot keep this
project's rule that servers bind 127.0.0.1 only: its stats and Prometheus
listeners bind every interface and its admin socket is writable by every local
user, with no setting to change either. When this test fails, Ray has changed
the template: make HAProxy the default if the new one can be kept local.

Serve's gRPC proxy (`grpc_options` of a Serve config) listens on `[::]:port`,
every interface, whatever `http_options.host` says, and has no authentication
of its own: an internal caller's gRPC port would be the scoring path open to the
network with no API key. When the second test fails, Ray lets the address be
chosen: add the gRPC ingress on 127.0.0.1 then.
"""

from __future__ import annotations

import inspect

from ray.serve._private import grpc_util, haproxy_templates


def test_rays_haproxy_config_still_opens_side_ports_on_every_interface() -> None:
    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    assert "bind *:{{ config.stats_port }}" in template  # `listen stats`: every interface
    assert "bind :{{ config.metrics_port }}" in template  # `frontend prometheus`: every interface
    assert "mode 666 level admin" in template  # the runtime API socket: any local user, admin level


def test_rays_grpc_proxy_still_listens_on_every_interface() -> None:
    source = inspect.getsource(grpc_util.start_grpc_server)
    assert 'add_grpc_address(server, f"[::]:{grpc_options.port}")' in source
