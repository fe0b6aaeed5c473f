"""The example nginx configuration in docs/deploy/nginx.conf works in front of the stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.admin.conftest import running_console
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


@contextmanager
def running_nginx(tmp_path: Path, binary: str, site: str) -> Iterator[str]:
    """nginx serving ``site`` (its own temporary directories under ``tmp_path``); the site's URL."""
    listen = re.search(r"listen 127\.0\.0\.1:(\d+);", site).group(1)  # type: ignore[union-attr]
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / name).mkdir(exist_ok=True)
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
    {site}
}}
"""
    (tmp_path / "nginx.conf").write_text(main)
    nginx = subprocess.Popen([binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    try:
        url = f"http://127.0.0.1:{listen}"
        wait_until(lambda: requests.get(url + "/", timeout=1).status_code in (200, 404), what="nginx")
        yield url
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_the_documented_nginx_site_proxies_the_api(tmp_path, nginx_binary):
    with running_api(tmp_path, frontend={"trust_proxy_headers": True}) as api:
        frontend_port = int(api.url.rsplit(":", 1)[1])
        with running_nginx(tmp_path, nginx_binary, site_for_test(frontend_port, free_port())) as url:
            wait_until(lambda: requests.get(url + "/healthz", timeout=1).ok, what="nginx")
            key = api.key()
            response = requests.post(
                url + "/api/", headers={"Authorization": f"Bearer {key}"}, json={"text": "via nginx"}, timeout=10
            )
            assert response.status_code == 200 and response.json()["message"] == "via nginx"
            assert requests.get(url + "/metrics", timeout=5).status_code == 404
            assert requests.get(url + "/admin/sign-in", timeout=5).status_code == 404
            assert requests.post(url + "/api/", json={"text": "x"}, timeout=5).status_code == 401


def console_site_for_test(console_port: int, listen_port: int) -> str:
    """The documented console site with a test port and no TLS, in front of the test's console."""
    site = (ROOT / "docs/deploy/nginx-console.conf").read_text()
    site = re.sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{listen_port};", site)
    site = re.sub(r"\n\s*ssl_certificate(_key)? [^\n]*;", "", site)
    return site.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{console_port};")


def test_the_documented_console_site_serves_the_console_with_a_secure_session_cookie(tmp_path, nginx_binary):
    with running_console(tmp_path, frontend={"trust_proxy_headers": True}) as console:
        console_port = int(console.url.rsplit(":", 1)[1])
        with running_nginx(tmp_path, nginx_binary, console_site_for_test(console_port, free_port())) as url:
            form = requests.get(url + "/admin/sign-in", timeout=10)
            assert form.ok and "Secure" in form.headers["Set-Cookie"] and "HttpOnly" in form.headers["Set-Cookie"]
            bearer = {"Authorization": f"Bearer {console.token}"}
            listed = requests.get(url + "/admin/api/keys", headers=bearer, timeout=10)
            assert listed.ok and listed.json()["total"] == 0
            assert requests.get(url + "/api/", timeout=5).status_code == 404  # the model API is not behind this site
