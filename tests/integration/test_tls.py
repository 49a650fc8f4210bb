"""TLS on the listener (with certificate rotation) and to https:// upstreams (verified)."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.support.harness import ProxyProcess

trustme = pytest.importorskip("trustme")


async def _https_backend(ca) -> tuple[web.AppRunner, int]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handle(request):
        return web.json_response({"name": "secure", "scheme": request.scheme})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner, runner.addresses[0][1]


def _write(path, config: dict) -> None:
    path.write_text(yaml.safe_dump({"access_log": {"format": "off"}, **config}))


async def test_listener_tls_and_certificate_rotation(tmp_path, echo_factory):
    echo = await echo_factory("echo")
    first_ca, second_ca = trustme.CA(), trustme.CA()
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(ca):
        issued = ca.issue_cert("127.0.0.1", "localhost")
        issued.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        issued.private_key_pem.write_to_path(str(key_file))

    install(first_ca)
    config = tmp_path / "pyproxy.yaml"
    _write(config, {"tls": {"cert": str(cert_file), "key": str(key_file)},
                    "services": {"svc": {"endpoints": [f"127.0.0.1:{echo.port}"]}},
                    "routes": [{"name": "main", "backends": [{"service": "svc"}]}]})
    proxy = ProxyProcess(config).start()
    url = f"https://127.0.0.1:{proxy.port}/hello"
    try:
        def client_for(ca):
            context = ssl.create_default_context()
            ca.configure_trust(context)
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

        async with client_for(first_ca) as session:
            async with session.get(url) as r:
                body = json.loads(await r.read())
        assert dict(body["headers"])["x-forwarded-proto"] == "https"

        install(second_ca)  # rotation: new handshakes must present the new certificate
        await asyncio.sleep(2.0)
        async with client_for(second_ca) as session:
            async with session.get(url) as r:
                assert r.status == 200
        async with client_for(first_ca) as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url)
    finally:
        proxy.stop()


async def test_https_upstream_is_verified(tmp_path):
    ca = trustme.CA()
    runner, port = await _https_backend(ca)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        trusted = tmp_path / "trusted.yaml"
        _write(trusted, {
            "debug_headers": True,
            "services": {"secure": {"endpoints": [f"https://localhost:{port}"],
                                    "tls": {"ca": str(ca_file)}}},
            "routes": [{"name": "main", "backends": [{"service": "secure"}]}]})
        proxy = ProxyProcess(trusted).start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/x") as r:
                    assert r.status == 200
                    assert json.loads(await r.read()) == {"name": "secure", "scheme": "https"}
        finally:
            proxy.stop()

        # Without the CA the system store cannot verify the test certificate: refused.
        untrusted = tmp_path / "untrusted.yaml"
        _write(untrusted, {
            "debug_headers": True,
            "services": {"secure": {"endpoints": [f"https://localhost:{port}"]}},
            "routes": [{"name": "main", "backends": [{"service": "secure"}]}]})
        proxy = ProxyProcess(untrusted).start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/x") as r:
                    assert r.status == 503 and r.headers["x-pyproxy-flags"] == "UF"
        finally:
            proxy.stop()
    finally:
        await runner.cleanup()
