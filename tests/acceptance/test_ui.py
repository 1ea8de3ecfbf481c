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

pytestmark = pytest.mark.single_mode("the dashboard's page and browser test: the same routes in every credit mode")

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


def shot(element: object, path: Path) -> None:
    """A screenshot of one element: it is drawn (visible, not empty) as a person would see it."""
    from selenium.webdriver.remote.webelement import WebElement

    assert isinstance(element, WebElement)
    assert element.is_displayed()
    assert element.screenshot(str(path))
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100
    assert height > 10
    assert len(png) > 1500  # more than a blank box
    keep_for_docs(path)


#: The documentation shows the screenshots this test takes: JOBS_TEST_DOCS_SCREENSHOTS=1 refreshes them.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard"


def keep_for_docs(path: Path) -> None:
    if os.environ.get("JOBS_TEST_DOCS_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)


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
    # Money reads as the API's amounts: plain, 4 significant digits at most, never an exponent.
    cards = browser.find_element(By.ID, "credits").text
    assert "e-" not in cards
    assert "e+" not in cards

    # The job closes: the cost chart draws its bars, with a legend of their colours.
    r = httpx.post(
        f"{shared_proxy.url}/api/jobs/{job_id}/complete",
        headers={"Authorization": "Bearer sk-team-a"},
        json={"status": "completed"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    browser.refresh()
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-cost rect"))
    legend = browser.find_element(By.ID, "cost-legend")
    assert legend.is_displayed()
    assert [s.text for s in legend.find_elements(By.TAG_NAME, "span")] == [
        "average",
        "median (p50)",
        "95th percentile (p95)",
    ]
    assert not browser.find_element(By.ID, "cost-empty").is_displayed()
    assert "e-" not in browser.find_element(By.ID, "chart-cost").text
    shot(browser.find_element(By.ID, "cost-legend").find_element(By.XPATH, ".."), tmp_path / "legend.png")

    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    row.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "detail-id"), job_id))
    calls = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#calls tbody tr") or None)
    purposes = sorted(tr.find_elements(By.TAG_NAME, "td")[1].text for tr in calls)
    assert purposes == ["extract", "summarise"]
    # stream and cache say yes or no, never a blank cell.
    for tr in calls:
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        assert cells[8:10] == ["no", "no"], cells
    # The detail is in view wherever the list was scrolled (a panel at the right).
    box = browser.execute_script(
        "const r = document.getElementById('detail').getBoundingClientRect();"
        "return [r.top, r.left, r.bottom, window.innerWidth, window.innerHeight];"
    )
    assert box[0] >= 0
    assert box[1] < box[3]
    assert box[2] <= box[4] + 1
    shot(browser.find_element(By.ID, "detail"), tmp_path / "detail.png")
    browser.find_element(By.ID, "detail-close").click()

    # Filters: the job's type and status keep it, another status hides it.
    browser.find_element(By.ID, "f-type").send_keys("document_analysis")
    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("completed")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]'))
    statuses = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr td:nth-child(3)")}
    assert statuses == {"completed"}
    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("expired")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "jobs-hint"), "No jobs yet."))
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')

    page = tmp_path / "jobs-ui.png"
    assert browser.save_screenshot(str(page))
    keep_for_docs(page)
    assert page.stat().st_size > 10_000


def test_admin_picks_a_team_sees_empty_states_and_pages(shared_proxy: Proxy, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert isinstance(browser, WebDriver)
    oai = openai.OpenAI(base_url=shared_proxy.url, api_key="sk-team-b", max_retries=0)
    jobs = [f"page-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    for job_id in jobs:
        oai.chat.completions.create(
            model="ChatAgent", messages=[{"role": "user", "content": "x"}], extra_body=tag(job_id)
        )
        wait_for_job(shared_proxy, job_id, calls=1, key="sk-team-b")
    wait = WebDriverWait(browser, 30)

    # A team key sees only its own team in the list route; the admin sees every team.
    own = httpx.get(f"{shared_proxy.url}/api/teams", headers={"Authorization": "Bearer sk-team-b"}, timeout=30)
    assert [t["team_id"] for t in own.json()["teams"]] == ["team-b"]
    assert isinstance(own.json()["teams"][0]["credits_remaining"], str)

    # The admin is greeted by a team picker, not an error.
    browser.get(f"{shared_proxy.url}/jobs/ui?page_size=2")
    browser.find_element(By.ID, "key").send_keys("sk-master")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "proxy admin"))
    wait.until(ec.text_to_be_present_in_element((By.ID, "jobs-hint"), "Pick a team above"))
    assert browser.find_element(By.ID, "jobs-error").text == ""
    picker = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#team-picker option[value="team-b"]') or None)
    assert "credits" in picker[0].text
    shot(browser.find_element(By.ID, "team-section"), tmp_path / "team-picker.png")

    # A team with no closed job: empty states instead of an empty chart.
    browser.find_element(By.ID, "team-input").send_keys(f"nobody-{uuid.uuid4().hex[:6]}")
    browser.find_element(By.CSS_SELECTOR, "#team-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "cost-empty").is_displayed())
    assert "No job has closed yet" in browser.find_element(By.ID, "cost-empty").text
    assert not browser.find_element(By.ID, "chart-cost").is_displayed()
    assert "max" not in browser.page_source.split('id="chart-cost"')[1].split("</svg>")[0]
    assert browser.find_element(By.ID, "success-empty").is_displayed()
    shot(browser.find_element(By.ID, "cost-empty"), tmp_path / "empty-state.png")

    # Picking team-b lists its jobs two at a time, newest first, with pages.
    Select(browser.find_element(By.ID, "team-picker")).select_by_value("team-b")
    wait.until(ec.text_to_be_present_in_element((By.ID, "team-name"), "team-b"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{jobs[2]}"]'))
    first = [tr.get_attribute("data-job-id") for tr in browser.find_elements(By.CSS_SELECTOR, "tr.job")]
    assert first[:2] == [jobs[2], jobs[1]]
    assert browser.find_element(By.ID, "pager").is_displayed()
    browser.find_element(By.ID, "next-page").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "page-info"), "page 2"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{jobs[0]}"]'))
    assert jobs[2] not in [tr.get_attribute("data-job-id") for tr in browser.find_elements(By.CSS_SELECTOR, "tr.job")]
    browser.find_element(By.ID, "prev-page").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{jobs[2]}"]'))
    shot(browser.find_element(By.ID, "jobs"), tmp_path / "jobs-page.png")
