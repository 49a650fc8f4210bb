"""In-cluster mode: the Kubernetes API as the source of routes and endpoints.

- :mod:`.resources`: the API resources pyproxy reads and writes (group, version, plural);
- :mod:`.client`: the one module that speaks to the API server (``kubernetes_asyncio``):
  list, watch, get and writes over plain dicts, with the service-account token re-read
  when it rotates;
- :mod:`.watch`: one reflector per kind: paged list, then watch, resumed and re-listed as
  the API's rules require; its decisions are a pure state machine;
- :mod:`.store`: the objects seen, per kind, keyed by namespace/name;
- :mod:`.translate`: objects → documents for ``config.assemble`` (routes through the
  existing importers; Services and EndpointSlices → native services with pod endpoints);
- :mod:`.provider`: runs the reflectors, batches changes into one config swap, and keeps
  the per-object import results that the status writer reads.
"""
