"""In-cluster mode: the Kubernetes API as the source of routes and endpoints (docs/kubernetes.md)."""
