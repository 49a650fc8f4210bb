"""Service discovery: routes and endpoints from outside the config files (docs/kubernetes.md)."""
