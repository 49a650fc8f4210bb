"""Request accounting: what the proxy counts, and how it is shown (docs/metrics.md).

One module per concern; import from the module that owns the thing:

* ``stats``: ``Stats``, the counters the request path increments (plain Python: a dict
  increment, a bisect into fixed bucket bounds) — one per process, kept over reloads;
* ``windows``: the live per-second windows per (route, backend) behind the dashboard,
  ``pyproxy status`` and the canary judge;
* ``exposition``: the Prometheus text format, built from ``Stats`` at scrape time — the only
  module that imports ``prometheus_client``;
* ``linkerd``: the Linkerd-named series (``metrics.linkerd_compat``);
* ``merge``: adding up several workers' expositions and windows (``--workers N``).
"""
