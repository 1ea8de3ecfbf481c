"""The jobs dashboard (/jobs/ui) in headless Chromium (Debian's chromium + chromedriver, Selenium)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.acceptance.helpers import tag, wait_for_job
from tests.support.services import Proxy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see scripts/install-test-deps)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_needs_no_cdn(shared_proxy: Proxy) -> None:
    r = httpx.get(f"{shared_proxy.url}/jobs/ui", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in r.text


def test_log_in_see_a_job_open_its_detail(shared_proxy: Proxy, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert isinstance(browser, WebDriver)
    job_id = f"ui-{uuid.uuid4().hex[:8]}"
    oai = openai.OpenAI(base_url=shared_proxy.url, api_key="sk-team-a", max_retries=0)
    for purpose in ("extract", "summarise"):
        oai.chat.completions.create(
            model="ChatAgent", messages=[{"role": "user", "content": "x"}], extra_body=tag(job_id, purpose=purpose)
        )
    wait_for_job(shared_proxy, job_id, calls=2)
    wait = WebDriverWait(browser, 30)

    browser.get(f"{shared_proxy.url}/jobs/ui")
    browser.find_element(By.ID, "key").send_keys("sk-nope")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "Invalid API key"))

    key = browser.find_element(By.ID, "key")
    key.clear()
    key.send_keys("sk-team-a")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "team team-a"))
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')))
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == [job_id, "document_analysis", "in_progress", "2"]
    wait.until(ec.text_to_be_present_in_element((By.ID, "credits"), "credits remaining"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-cost rect"))

    row.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "detail-id"), job_id))
    calls = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#calls tbody tr") or None)
    purposes = sorted(tr.find_elements(By.TAG_NAME, "td")[1].text for tr in calls)
    assert purposes == ["extract", "summarise"]

    # Filters: the job's type and status keep it, another status hides it.
    browser.find_element(By.ID, "f-type").send_keys("document_analysis")
    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("in_progress")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]'))
    statuses = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr td:nth-child(3)")}
    assert statuses == {"in_progress"}
    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("expired")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "jobs-error"), "No jobs yet."))
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')

    shot = tmp_path / "jobs-ui.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
