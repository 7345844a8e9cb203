"""The operator console in a real browser: headless Chromium driven by Selenium against gunicorn.

Chromium and its driver are Debian's `chromium` and `chromium-driver` packages
(.ci/run installs them); Selenium is given the driver's path, so it never looks
for a browser on the network. The browser starts with a new empty profile and
no background networking. It reaches one gunicorn (two workers) on PostgreSQL
and Redis through nginx, as in production: Chromium opens connections ahead of
its requests (preconnects), and two of them sent straight to two sync workers
hold both until they are used or dropped (tests/e2e/test_e2e_nginx_stack.py).
Production settings with an admin key, rate limits on and keys required.

Set CONSOLE_SCREENSHOTS_DIR (e.g. docs/images) to keep the two screenshots
there; they always go to the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import require_nginx
from tests.e2e.stack import gunicorn_env
from tests.procs import Gunicorn, Nginx, ThrowawayRedis, wait_for
from tests.web import request

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN_KEY = "console-e2e-admin-key-0123456789abcdef"
POOL = 10
DESKTOP, PHONE = (1280, 800), (390, 844)
pytestmark = [pytest.mark.e2e]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _require_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    message = "Chromium is not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def server(pg_database, tmp_path):
    require_nginx()
    redis = ThrowawayRedis().start()
    env = gunicorn_env(
        pg_database(pool=POOL),
        redis.url,
        POOL,
        ADMIN_API_KEY=ADMIN_KEY,
        API_AUTH_REQUIRED="true",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    (tmp_path / "prom").mkdir()
    gunicorn = Gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log")
    nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{gunicorn.port}"])
    try:
        gunicorn.start()
        yield nginx.start()
    finally:
        nginx.stop()
        gunicorn.stop()
        redis.stop()


@pytest.fixture
def browser(tmp_path):
    _require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # every CSP violation of every page, whether or not the browser also logs it
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.cspViolations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
        },
    )
    yield driver
    driver.quit()


def api(server, method: str, path: str, body: dict | None = None):
    response = request(server.port, method, path, body, headers={"X-API-Key": ADMIN_KEY})
    assert response.status < 300, response
    return response.json() if response.body else None


def activation(server, pool: str = "default"):
    path = "/api/tokens/activate" if pool == "default" else f"/api/pools/{pool}/tokens/activate"
    body = {"user_id": str(uuid.uuid4())}
    return request(server.port, "POST", path, body, headers={"X-API-Key": ADMIN_KEY})


def lease(server, pool: str = "default") -> dict:
    answer = activation(server, pool)
    assert answer.status in (200, 202), answer  # 202: a ticket in a queue pool
    return answer.json()


def other_pools(server) -> dict[str, int]:
    """With the pools API: a pool that refuses when full, some of its tokens leased and one
    refusal; with queues too, a pool that queues, full, with one waiting ticket.
    {series of the chart: how many that added}."""
    paths = request(server.port, "GET", "/openapi.json").json()["paths"]
    if "/api/pools" not in paths:
        return {"leases": 0, "rejections": 0}
    api(
        server,
        "POST",
        "/api/pools",
        {"name": "licences", "size": 3, "lifetime_seconds": 600, "policy": "reject"},
    )
    for _ in range(3):
        lease(server, "licences")
    assert activation(server, "licences").status == 409  # POOL_EXHAUSTED
    if not [path for path in paths if "/tickets" in path]:
        return {"leases": 3, "rejections": 1}
    api(
        server, "POST", "/api/pools", {"name": "seats", "size": 2, "lifetime_seconds": 300, "policy": "queue"}
    )
    for _ in range(3):
        lease(server, "seats")  # the third waits in the queue
    return {"leases": 5, "rejections": 1, "queued": 1}


def texts(driver, selector: str) -> list[str]:
    """The rendered text of each element matching `selector`, read in one script (the console
    re-renders its tables every poll, so an element found first may be gone when read)."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map((e) => e.innerText.trim())"
    return driver.execute_script(script, selector)


def click(driver, selector: str) -> None:
    """Click the element matching `selector` as it is now (found and clicked in one script)."""
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def text_of(driver, selector: str) -> str:
    return " ".join(texts(driver, selector))


def within(driver, seconds: float, condition, what: str) -> float:
    """Wait until `condition(driver)` holds; the seconds it took."""
    started = time.monotonic()
    WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition, message=what)
    return time.monotonic() - started


def pool_cell(driver, pool: str, column: str) -> str:
    return text_of(driver, f'#pools tr[data-pool="{pool}"] td.{column}')


def has_endpoint(server, path: str) -> bool:
    return path in request(server.port, "GET", "/openapi.json").json()["paths"]


def requests_sent(driver) -> list[dict]:
    """The browser's requests so far (Network.requestWillBeSent): url and headers."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            req = message["params"]["request"]
            sent.append({"url": req["url"], "headers": req["headers"]})
    return sent


def screenshot(driver, size: tuple[int, int], name: str, tmp_path: Path) -> None:
    """The page in a viewport of exactly `size` CSS pixels (a phone's below 600 wide), saved as `name`."""
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    # the page itself fits the width: nothing scrolls sideways (a wide table scrolls inside its card)
    wait_for(
        lambda: driver.execute_script("return document.documentElement.scrollWidth <= innerWidth"),
        5,
        what=f"no horizontal scrolling at {size}",
    )
    time.sleep(0.3)  # the chart redraws for the new width
    driver.save_screenshot(str(tmp_path / name))
    keep = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if keep:
        shutil.copy(tmp_path / name, Path(keep) / name)


def test_the_console_in_a_real_browser(server, browser, tmp_path):
    driver = browser
    for _ in range(POOL + 2):  # a full pool and two evictions: something to show
        lease(server)
    added = other_pools(server)

    # the page is served without a key and asks for one
    driver.get(server.url + "/console")
    within(driver, 5, lambda d: d.find_element(By.ID, "key-form").is_displayed(), "the key form")
    assert not driver.find_element(By.ID, "dashboard").is_displayed()

    # a wrong key is refused and the form stays
    driver.find_element(By.ID, "key-input").send_keys("not-the-key")
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    within(driver, 5, lambda d: "refused" in text_of(d, "#key-error"), "the refusal")
    assert not driver.find_element(By.ID, "dashboard").is_displayed()

    # the admin key opens the console: the pools with their counts
    driver.find_element(By.ID, "key-input").clear()
    driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    within(driver, 5, lambda d: texts(d, '#pools tr[data-pool="default"]'), "pools")
    assert pool_cell(driver, "default", "size") == str(POOL)
    assert pool_cell(driver, "default", "active") == str(POOL)
    health = request(server.port, "GET", "/health").json()["status"]
    within(driver, 6, lambda d: text_of(d, "#health-badge") == f"health: {health}", "health at a glance")
    assert {"database", "redis"} <= set(texts(driver, "#health-checks .badge"))
    within(driver, 5, lambda d: len(texts(d, "#leases tbody tr")) == POOL, "leases")
    if added["leases"]:  # every pool, and the leases of the one chosen
        assert (pool_cell(driver, "licences", "active"), pool_cell(driver, "licences", "size")) == ("3", "3")
        if added.get("queued"):
            assert pool_cell(driver, "seats", "queued") == "1"
        click(driver, '#pools tr[data-pool="licences"]')
        within(driver, 2, lambda d: len(texts(d, "#leases tbody tr")) == 3, "the chosen pool's leases")
        assert "in licences" in text_of(driver, "#leases-note")
        click(driver, '#pools tr[data-pool="default"]')
        within(driver, 2, lambda d: len(texts(d, "#leases tbody tr")) == POOL, "the default pool's leases")

    # a lease made through the API shows in the counts and the leases within 2 s
    api(server, "DELETE", "/api/tokens/active")
    within(driver, 2, lambda d: pool_cell(d, "default", "active") == "0", "the cleared pool")
    token = lease(server)["token_id"]
    took = within(driver, 2, lambda d: pool_cell(d, "default", "active") == "1", "the new lease's count")
    within(driver, 2 - took, lambda d: token[:8] in text_of(d, "#leases tbody"), "the new lease in the list")
    if has_endpoint(server, "/api/events/stream"):
        within(driver, 2, lambda d: token[:8] in text_of(d, "#feed"), "the new lease in the feed")
    else:
        assert "Events not available" in text_of(driver, "#feed")
    # the chart counts every lease of the last hour (it is read every 5 s)
    leases = POOL + 3 + added["leases"]
    within(driver, 7, lambda d: f"leases {leases}" in text_of(d, "#chart-legend"), "the chart")
    legend = text_of(driver, "#chart-legend")
    assert "evictions 2" in legend and f"rejections {added['rejections']}" in legend

    # the key is kept for the tab: a reload opens the console without asking
    driver.refresh()
    within(driver, 5, lambda d: d.find_element(By.ID, "dashboard").is_displayed(), "the console after reload")
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    if has_endpoint(server, "/api/events/stream"):  # the feed after the reload: from now on
        # "now" is when its first stream request is answered: a lease made before is old news
        within(driver, 5, lambda d: text_of(d, "#feed-status") == "live", "the reloaded page's feed")
        token = lease(server)["token_id"]
        within(driver, 2, lambda d: token[:8] in text_of(d, "#feed"), "a lease in the reloaded page's feed")

    screenshot(driver, DESKTOP, "console-desktop.png", tmp_path)
    screenshot(driver, PHONE, "console-phone.png", tmp_path)

    # the key travelled only as a header: never in a URL, a cookie or the server's logs
    sent = requests_sent(driver)
    assert [r for r in sent if "/api/" in r["url"]], sent
    assert not [r["url"] for r in sent if ADMIN_KEY in r["url"]]
    api_calls = [r for r in sent if "/api/" in r["url"] and r["url"].startswith(server.url)]
    assert all("X-API-Key" in r["headers"] for r in api_calls)
    web = [r["url"] for r in sent if r["url"].startswith(("http:", "https:"))]
    assert [url for url in web if not url.startswith(server.url)] == []  # nothing but this origin
    assert driver.get_cookies() == []
    assert ADMIN_KEY not in (tmp_path / "gunicorn.log").read_text()

    # no CSP violation and no console error but the wrong key's 401
    assert driver.execute_script("return window.cspViolations") == []
    log = driver.get_log("browser")
    assert not [e for e in log if "Content Security Policy" in e["message"]], log
    errors = [e for e in log if e["level"] == "SEVERE"]
    assert all("/api/monitoring/activity" in e["message"] and "401" in e["message"] for e in errors), errors
