"""Where routes and endpoints come from besides config files: the Kubernetes API.

``kubernetes/`` reads Gateway API, SMI and Istio objects and EndpointSlices from the API
server and hands the running proxy one ``Config`` built through the same importers as a
file (docs/kubernetes.md).
"""
