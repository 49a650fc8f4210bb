"""The config: YAML files → one checked, frozen :class:`~pyproxy.config.model.Config`.

Read in this order (each module imports only those before it):

- ``model``: the frozen values the rest of pyproxy uses;
- ``document``: a YAML document as plain values with the line of each key path, and the
  located issues (``file:line: key.path: message``);
- ``parse``: the native blocks' schemas (``listen``, ``services``, ``routes``...);
- ``compat``: Istio, SMI and Gateway API manifests → the same model;
- ``assemble``: documents → one Config (native and manifests, in dependency order);
- ``load``: files → documents → ``assemble`` (the only module that imports ``yaml``).

docs/configuration.md is the reference of every key.
"""
