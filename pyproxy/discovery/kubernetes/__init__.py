"""In-cluster mode: routes and endpoints from the Kubernetes API (docs/kubernetes.md)."""
