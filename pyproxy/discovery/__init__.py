"""Where routes and endpoints come from besides the config files.

``dns.py`` re-resolves DNS names on an interval (one endpoint per address); ``kubernetes/``
reads Gateway API, SMI and Istio objects and EndpointSlices from the API server and hands
the running proxy one ``Config`` built through the same importers as a file
(docs/kubernetes.md). Either way the runtime compiles and swaps it in exactly as a file
reload does.
"""
