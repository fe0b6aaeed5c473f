"""What each key cost in GPU time: three keys share a tiny-model worker at once, each is charged
its requests' share of every pass of the device, the shares add up to the time the worker's device
was busy, and every report (``/usage/``, the command line, the admin API, the console) shows the
same figures, priced per GPU-hour."""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytest.importorskip("transformers")

from frontend.admin import views
from tests.accounts.test_cli import llmapi
from tests.admin.conftest import running_console
from tests.harness import wait_until
from tests.models.test_batching import generation_worker

IDLE = re.compile(r"engine_idle .*busy_seconds=([0-9.]+)")
FINISHED = re.compile(r"generation_finished .*request_id=(?!warm-up)")
PRICE = 36.0  # per GPU-hour: a GPU-second costs 0.01
# Per key: (requests, tokens each); the keys' loads differ so that their GPU times differ.
LOADS = [(2, 8), (3, 40), (4, 90)]


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_llama_dir):
    with running_console(
        tmp_path_factory.mktemp("gpu-time"),
        workers=(generation_worker(tiny_llama_dir, max_batch=8),),
        frontend={"request_timeout": 60.0},
        accounts={"gpu_hour_prices": {"tiny": PRICE}},
    ) as console:
        yield console


def complete(url: str, secret: str, tokens: int, index: int) -> None:
    body = {"model": "tiny", "prompt": f"Story {index}: the lighthouse", "max_tokens": tokens, "temperature": 0}
    answer = requests.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert answer.status_code == 200, answer.text


def busy_seconds(worker_log: str, answered: int) -> float | None:
    """The worker's busy time once its engine went idle after ``answered`` answers (its warm-up's
    aside), None before."""
    lines = [line for line in worker_log.splitlines() if "engine_idle" in line or FINISHED.search(line)]
    idle = IDLE.search(lines[-1]) if lines else None
    finished = sum(bool(FINISHED.search(line)) for line in lines)
    return float(idle.group(1)) if idle and finished == answered else None


def test_three_keys_are_charged_shares_that_add_up_to_the_workers_busy_time(console, tmp_path):
    api = console.api
    keys = [api.store.create_key(email=f"team{index}@example.com") for index in range(len(LOADS))]
    with ThreadPoolExecutor(max_workers=sum(count for count, _ in LOADS)) as pool:
        calls = [
            pool.submit(complete, api.url, secret, tokens, index)
            for (_, secret), (count, tokens) in zip(keys, LOADS)
            for index in range(count)
        ]
        for call in calls:
            call.result()
    requests_made = sum(count for count, _ in LOADS)
    wait_until(lambda: sum(row.requests for row in api.store.usage_report()) == requests_made, what="the records")
    worker = next(process for process in api.stack.processes if "worker" in process.args)
    busy = wait_until(lambda: busy_seconds(worker.log(), requests_made), what="the worker's idle line")

    charged = {info.id: sum(row.gpu_seconds for row in api.store.usage_report(key_id=info.id)) for info, _ in keys}
    assert sum(charged.values()) == pytest.approx(busy, rel=0.01)
    light, middle, heavy = (charged[info.id] for info, _ in keys)
    assert 0 < light < middle < heavy

    for info, secret in keys:
        seconds = charged[info.id]
        mine = api.get("/usage/", secret).json()["usage"]
        assert [(row["gpu_seconds"], row["cost"]) for row in mine] == [(seconds, pytest.approx(seconds * PRICE / 3600))]
        report = llmapi(tmp_path, "--config", str(api.stack.config_path), "usage", "--json", "--key", str(info.id))
        assert report.returncode == 0, report.stderr
        assert [(row["gpu_seconds"], row["cost"]) for row in json.loads(report.stdout)] == [(seconds, mine[0]["cost"])]
        admin = console.call("GET", f"/admin/api/keys/{info.id}/usage").json()["usage"]
        assert [(row["gpu_seconds"], row["cost"]) for row in admin] == [(seconds, mine[0]["cost"])]

    browser, _ = console.signed_in()
    for info, _ in keys:
        page = browser.get(f"{console.url}/admin/keys/{info.id}", timeout=10).text
        assert views.gpu_time(charged[info.id]) in page and views.cost(charged[info.id] * PRICE / 3600) in page
    top = browser.get(f"{console.url}/admin/usage", timeout=10).text
    assert all(views.gpu_time(seconds) in top for seconds in charged.values())
    latency = top.split('<table class="latency">')[1].split("</table>")[0]
    assert f"<td>tiny</td><td class=\"num\">{sum(count for count, _ in LOADS)}</td>" in latency

    heavy_key = keys[2][0].id
    listed = console.call("GET", "/admin/api/requests", params={"key": heavy_key}).json()["requests"]
    assert len(listed) == LOADS[2][0]
    assert {(row["endpoint"], row["status"], row["outcome"]) for row in listed} == {("/v1/completions", 200, "ok")}
    assert all(row["first_token_seconds"] > 0 and row["latency_seconds"] >= row["first_token_seconds"] for row in listed)
    assert sum(row["gpu_seconds"] for row in listed) == pytest.approx(charged[heavy_key])
    exported = console.call("GET", "/admin/api/requests", params={"key": heavy_key, "format": "csv"})
    assert exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(row["request_id"], float(row["gpu_seconds"])) for row in rows] == [
        (row["request_id"], row["gpu_seconds"]) for row in listed
    ]
    page = browser.get(f"{console.url}/admin/requests", params={"key": heavy_key}, timeout=10).text
    assert all(row["request_id"] in page for row in listed)


def test_a_request_refused_by_its_worker_is_listed_with_its_status_and_error(console):
    api = console.api
    info, secret = api.store.create_key(email="terse@example.com", max_prompt_tokens=1)
    refused = api.post("/v1/completions", secret, {"model": "tiny", "prompt": "far too long a prompt", "max_tokens": 2})
    assert refused.status_code == 400
    request_id = refused.headers["X-Request-Id"]
    listed = wait_until(
        lambda: console.call("GET", "/admin/api/requests", params={"key": info.id, "outcome": "failed"}).json()["requests"],
        what="the refused request's record",
    )
    assert [(row["request_id"], row["status"], row["outcome"]) for row in listed] == [(request_id, 400, "invalid_input")]
    assert console.call("GET", "/admin/api/requests", params={"key": info.id, "outcome": "ok"}).json()["requests"] == []
