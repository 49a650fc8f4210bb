"""Kubernetes objects as the API server serves them, for the discovery tests."""

from __future__ import annotations

from typing import Any

CONTROLLER = "pyproxy.dev/gateway-controller"


def meta(name: str, namespace: str | None = "shop", *, rv: str = "1", generation: int = 1,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "resourceVersion": rv, "generation": generation,
                             "creationTimestamp": "2026-01-01T00:00:00Z"}
    if namespace is not None:
        found["namespace"] = namespace
    if labels:
        found["labels"] = labels
    return found


def gateway_class(name: str = "pyproxy", controller: str = CONTROLLER) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": meta(name, None), "spec": {"controllerName": controller}}


def gateway(name: str = "public", class_name: str = "pyproxy",
            hostname: str | None = None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "http", "port": 80, "protocol": "HTTP"}
    if hostname:
        listener["hostname"] = hostname
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": meta(name), "spec": {"gatewayClassName": class_name,
                                             "listeners": [listener]}}


def http_route(name: str, backends: list[tuple[str, int]], *, parent: str = "public",
               hosts: tuple[str, ...] = ("shop.example",), rv: str = "1",
               generation: int = 1, extra_parents: list[dict[str, Any]] | None = None,
               ) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta(name, rv=rv, generation=generation),
            "spec": {"parentRefs": [{"name": parent}, *(extra_parents or [])],
                     "hostnames": list(hosts),
                     "rules": [{"backendRefs": [{"name": service, "port": 80, "weight": weight}
                                                for service, weight in backends]}]}}


def service(name: str, *, ports: list[dict[str, Any]] | None = None,
            namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, namespace),
            "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint(address: str, *, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None, pod: str | None = None) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    found: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod:
        found["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "shop"}
    return found


def endpoint_slice(name: str, service_name: str, endpoints: list[dict[str, Any]], *,
                   port: int = 8080, port_name: str | None = "http", namespace: str = "shop",
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    port_entry: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if port_name is not None:
        port_entry["name"] = port_name
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(name, namespace, labels={
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                **(labels or {})}),
            "addressType": "IPv4", "ports": [port_entry], "endpoints": endpoints}
