"""The ``kubernetes:`` block (docs/configuration.md#kubernetes) and the token file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyproxy.config.assemble import assemble
from pyproxy.config.document import ConfigInvalid, Document
from pyproxy.config.model import KubernetesConfig
from pyproxy.discovery.kubernetes.client import KubeApiError, TokenFile
from pyproxy.discovery.kubernetes.translate import settings_documents, with_kubernetes


def read(value: object) -> KubernetesConfig | None:
    config, _ = assemble([Document("k.yaml", {"kubernetes": value})], {})
    return config.kubernetes


def test_defaults_and_true_turn_it_on() -> None:
    assert read({}) == KubernetesConfig()
    assert read(True) == KubernetesConfig()
    assert KubernetesConfig().controller_name == "pyproxy.dev/gateway-controller"
    assert read(None) is None


def test_every_key() -> None:
    settings = read({"kubeconfig": "/k", "token_file": "/t", "namespaces": ["shop", "web"],
                     "controller_name": "example.com/gw", "kinds": ["HTTPRoute", "Service"],
                     "gateway": ["shop/public", "internal"], "watch_timeout": "1m",
                     "idle_timeout": "90s", "batch_delay": "50ms"})
    assert settings == KubernetesConfig("/k", "/t", ("shop", "web"), "example.com/gw",
                                        ("HTTPRoute", "Service"), ("shop/public", "internal"),
                                        60.0, 90.0, 0.05)


@pytest.mark.parametrize(("value", "message"), [
    ({"namespaces": ["*", "shop"]}, "cannot be listed with others"),
    ({"namespaces": ["Shop"]}, "namespace name"),
    ({"kinds": ["Ingress"]}, "Ingress"),
    ({"controller_name": "no-slash"}, "domain-prefixed path"),
    ({"gateway": ["a/b/c"]}, "NAME or NAMESPACE/NAME"),
    ({"watch_timeout": "0s"}, "watch_timeout"),
    ({"kubeconfig": "/k", "typo": 1}, "typo"),
])
def test_bad_values_are_located_errors(value: object, message: str) -> None:
    with pytest.raises(ConfigInvalid) as raised:
        read(value)
    assert message in str(raised.value)


def test_in_cluster_mode_starts_from_the_files_settings_only() -> None:
    documents = [Document("a.yaml", {"listen": "127.0.0.1:8080", "routes": [{"name": "x"}],
                                     "services": {"reviews": {}}}),
                 Document("b.yaml", {"apiVersion": "v1", "kind": "Service"})]
    assert [d.value for d in settings_documents(documents)] == [{"listen": "127.0.0.1:8080"}]
    assert with_kubernetes(None, True) == KubernetesConfig()
    assert with_kubernetes(None, False) is None
    own = KubernetesConfig(namespaces=("shop",))
    assert with_kubernetes(own, True) is own


def test_a_rotated_token_is_read_from_the_next_request_on(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    token = TokenFile(str(path))
    assert token.read() == "first"
    rotated = tmp_path / "token.new"
    rotated.write_text("second")
    os.replace(rotated, path)  # as the kubelet swaps the projected volume's files
    assert token.read() == "second"
    path.write_text("")  # caught mid-write: the previous token stays
    os.utime(path, ns=(1, 1))
    assert token.read() == "second"


def test_no_token_file_is_an_api_error(tmp_path: Path) -> None:
    with pytest.raises(KubeApiError) as raised:
        TokenFile(str(tmp_path / "missing")).read()
    assert raised.value.reason == "NoToken"
