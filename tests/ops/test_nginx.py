"""The example nginx configuration in docs/deploy/nginx.conf works in front of the stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import requests

from tests.frontend.conftest import running_api
from tests.harness import ROOT, free_port, wait_until

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def site_for_test(frontend_port: int, listen_port: int) -> str:
    """The documented site with a test port, no TLS, and the upstream at the test frontend."""
    site = (ROOT / "docs/deploy/nginx.conf").read_text()
    site = re.sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{listen_port};", site)
    site = re.sub(r"\n\s*ssl_certificate(_key)? [^\n]*;", "", site)
    return site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{frontend_port};")


@pytest.fixture
def nginx_binary():
    if NGINX is None:
        if os.environ.get("LLMAPI_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is required (LLMAPI_REQUIRE_NGINX=1) but not installed")
        pytest.skip("nginx is not installed")
    return NGINX


def test_the_documented_nginx_site_proxies_the_api(tmp_path, nginx_binary):
    with running_api(tmp_path, frontend={"trust_proxy_headers": True}) as api:
        listen = free_port()
        frontend_port = int(api.url.rsplit(":", 1)[1])
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / name).mkdir()
        main = f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {site_for_test(frontend_port, listen)}
}}
"""
        (tmp_path / "nginx.conf").write_text(main)
        nginx = subprocess.Popen([nginx_binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
        try:
            url = f"http://127.0.0.1:{listen}"
            wait_until(lambda: requests.get(url + "/healthz", timeout=1).ok, what="nginx")
            key = api.key()
            response = requests.post(url + "/api/", headers={"Authorization": f"Bearer {key}"}, json={"text": "via nginx"}, timeout=10)
            assert response.status_code == 200 and response.json()["message"] == "via nginx"
            assert requests.get(url + "/metrics", timeout=5).status_code == 404
            assert requests.post(url + "/api/", json={"text": "x"}, timeout=5).status_code == 401
        finally:
            nginx.terminate()
            nginx.wait(10)
