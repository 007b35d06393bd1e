"""The latent explorer when things go wrong under it: the version on show is retired, the server stops and
comes back. Each time the page says what happened in words (never a blank page or a spinner that stays), and
recovers on its own. The restarted server runs with --no-ui: a loaded page needs nothing but the API."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

from tests.plugins.server import publish_copy, start_aegen_server, wait_for_log
from tests.ui.conftest import PLANE_MODEL
from tests.ui.test_explorer import message, open_page, renders, wait_for


def click_sample_and_wait_for_message(browser, words: str) -> str:
    browser.find_element("id", "sample").click()
    wait_for(browser, f"document.getElementById('message').textContent.includes({json.dumps(words)})",
             f"a message saying {words!r}")
    wait_for(browser, "document.getElementById('busy').hidden", "the busy indicator to go")
    return message(browser)


def model_options(browser) -> list[str]:
    return [o.text for o in browser.find_elements("css selector", "#model option")]


def test_a_retired_version_and_a_restart_are_explained_and_the_page_recovers(browser, explorer_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(explorer_repository / PLANE_MODEL, repository / PLANE_MODEL)
    server = start_aegen_server(repository, tmp_path, "--repository-poll-seconds", "0.2")
    restarted = None
    try:
        open_page(browser, server, f"#model={PLANE_MODEL}&version=1")
        assert model_options(browser) == [f"{PLANE_MODEL} · version 1"]

        publish_copy(repository, PLANE_MODEL, 1)  # version 2; the latest:1 policy retires version 1
        wait_for_log(server, "model version retired", 1)
        text = click_sample_and_wait_for_message(browser, "is no longer served")
        assert f"{PLANE_MODEL} version 1 is no longer served" in text and "404" in text, text
        wait_for(browser, "document.getElementById('model').textContent.includes('version 2')", "the new list")
        assert model_options(browser) == [f"{PLANE_MODEL} · version 2"]

        http_port = server.http_url.rsplit(":", 1)[1]
        server.stop()
        text = click_sample_and_wait_for_message(browser, "does not answer")
        assert "Asking the server again every 2 s" in text, text

        restarted = start_aegen_server(repository, tmp_path, "--http-port", http_port, "--no-ui")
        wait_for(browser, "document.getElementById('message').textContent.includes('answers again')", "recovery")
        before = renders(browser, "samples-grid")
        browser.find_element("id", "sample").click()
        wait_for(browser, f"document.getElementById('samples-grid').dataset.renders > {before}", "a grid again")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
        assert errors == []  # failed requests are logged by the browser; no script error among them

        try:  # --no-ui: the API alone, the page's address is an unknown endpoint
            urllib.request.urlopen(f"{server.http_url}/", timeout=10)  # the same port
            raise AssertionError("GET / answered with --no-ui")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and "no such endpoint: GET /" in json.loads(exc.read())["error"]
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_the_page_and_its_files_carry_a_policy_that_allows_this_origin_only(explorer_server):
    with urllib.request.urlopen(f"{explorer_server.http_url}/", timeout=10) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    with urllib.request.urlopen(f"{explorer_server.http_url}/ui/js/app.js", timeout=10) as response:
        assert response.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
