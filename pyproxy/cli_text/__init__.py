"""What the config commands print: ``pyproxy validate`` and ``pyproxy convert``.

The CLI side of the config: these modules load a config through ``pyproxy.config`` and
render it for people (the validate summary, native YAML) or machines (``--json``).
Nothing in ``pyproxy.config`` prints; ``cli.py`` imports these modules only when the
command runs.
"""
