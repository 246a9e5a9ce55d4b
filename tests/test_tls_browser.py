"""The web console over HTTPS in a real Chromium that trusts the test CA (issue #19).

The gateway serves HTTPS with a certificate from the throwaway CA (tests/tls_fixtures.py) and calls
a mutual-TLS server; Chromium trusts that CA the way a user's machine would, through the NSS
database in its ``$HOME`` (``certutil``, Debian's libnss3-tools), with no flag that weakens checks.
The page loads as a secure context, a file goes through it, and a live session runs over ``wss://``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, create_key, eval_pair, start_server
from test_console_browser import Driver, chromium, error_text, open_console, run_live, wait_for
from test_gateway import GatewayProcess, start_gateway
from tls_fixtures import PKI, pki  # noqa: F401  (fixture)

CERTUTIL = shutil.which("certutil")

pytestmark = pytest.mark.slow   # a browser, or an npm install: tens of seconds

from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def https_browser(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Driver]:  # noqa: F811
    if CERTUTIL is None:
        pytest.skip("certutil is not installed (apt-get install libnss3-tools)")
    home = tmp_path_factory.mktemp("home")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "hushwire test CA", "-i",
                    str(pki.ca.path)], check=True, capture_output=True)
    yield from chromium(tmp_path_factory, env={**os.environ, "HOME": str(home)})


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory, pki: PKI,  # noqa: F811
               ) -> Iterator[tuple[ServerProcess, GatewayProcess, str]]:
    data = tmp_path_factory.mktemp("console-tls")
    srv = start_server(data, "--workers", "1", "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                       "--tls-client-ca", str(pki.ca.path), "--webhook-allow", "127.0.0.1/32",
                       "--webhook-base-delay-seconds", "0.2")
    gw = None
    try:
        gw = start_gateway(data, srv.target, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                           "--grpc-tls-ca", str(pki.ca.path), "--grpc-tls-cert", str(pki.client.cert),
                           "--grpc-tls-key", str(pki.client.key))
        yield srv, gw, create_key(data, "--name", "console-tls")
    finally:
        if gw is not None:
            assert gw.stop() == 0, gw.log
        assert srv.stop() == 0, srv.log


def test_the_console_over_https(https_browser: Driver, mtls_stack: tuple[ServerProcess, GatewayProcess, str],
                                tmp_path: Path) -> None:
    _, gw, key = mtls_stack
    assert gw.url.startswith("https://")
    open_console(https_browser, gw, key)
    # A certificate error would have left Chromium on its interstitial page, not the console.
    assert https_browser.execute_script("return window.isSecureContext && location.protocol") == "https:"
    noisy, _ = eval_pair("white_p00")
    https_browser.find_element(By.ID, "upload-input").send_keys(str(noisy))
    row = wait_for(https_browser, "a completed job", lambda d: (
        found := d.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id][data-status='completed']")) and found[0])
    link = row.find_element(By.CSS_SELECTOR, "a.download-result").get_attribute("href")
    assert link.startswith(f"{gw.url}/results/"), link
    assert not error_text(https_browser), error_text(https_browser)
    # The live stream runs over wss:// (the page picks the scheme from its own).
    audio, rate = run_live(https_browser, 4.0)
    assert len(audio) > 2 * rate
    problems = [e["message"] for e in https_browser.get_log("browser")
                if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
    assert not problems, problems


def test_the_console_shows_a_jobs_webhook(https_browser: Driver,
                                          mtls_stack: tuple[ServerProcess, GatewayProcess, str]) -> None:
    """A job uploaded with the page's webhook field: its row follows the delivery (a 500, then a 200)."""
    from test_webhooks import _receiver

    _, gw, key = mtls_stack
    rec = _receiver()
    rec.script = [500]
    try:
        open_console(https_browser, gw, key)
        field = https_browser.find_element(By.ID, "callback-url")
        field.clear()
        field.send_keys(rec.url + "/console-hook")
        noisy, _ = eval_pair("white_p05")
        https_browser.find_element(By.ID, "upload-input").send_keys(str(noisy))
        text = wait_for(https_browser, "the delivered webhook", lambda d: d.execute_script(
            "const e = document.querySelector('#jobs tr[data-job-id] .callback[data-state=delivered]');"
            "return e && e.textContent;"))
        assert text == "webhook: delivered after 2 attempts (last answer HTTP 200)", text
        assert len(rec.hits) == 2 and rec.hits[0].path == "/console-hook"
        assert not error_text(https_browser), error_text(https_browser)
    finally:
        https_browser.find_element(By.ID, "callback-url").clear()
        rec.server.shutdown()
        rec.server.server_close()
