"""The operator's surface in a real browser: Debian's Chromium driven by selenium through Debian's
chromedriver (no browser download), on the stack ``make serve`` starts — a Prefect server on 127.0.0.1,
the deployments of prefect.yaml, a process worker — and the UI an operator lands on at its address.

On failure each test saves a screenshot and the page's HTML into its tmp_path and prints where."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from odoops import devserver
from odoops.audit import read_audit
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import SAMPLE_ZIP, free_port
from tests.helpers import copy_sample, drop_database, host_env, write_inventory

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Where a good screenshot of a completed backup run is kept for the README (ODOOPS_SCREENSHOT_TO=path to refresh it).
SCREENSHOT_TO = os.environ.get("ODOOPS_SCREENSHOT_TO")


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_cluster, sample_template):
    """``make serve``'s stack on the test cluster: environments demo (a staging copy) and production."""
    root = tmp_path_factory.mktemp("browser")
    demo_db, demo_fs = copy_sample(pg_cluster, sample_template, root)
    prod_db, prod_fs = copy_sample(pg_cluster, sample_template, root)
    inventory = write_inventory(root / "environments.yaml", {
        "demo": host_env(pg_cluster, demo_db, demo_fs, stage="staging"),
        "production": host_env(pg_cluster, prod_db, prod_fs)})
    # No scheduler: the deployments' own schedules would start runs of their own in the middle of a test.
    # INFO logs as make serve has them (conftest quiets Prefect to WARNING for the other tests).
    local = devserver.start(root / "prefect", free_port(), {"ODOOPS_INVENTORY": str(inventory), **pg_cluster.env(),
                                                            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                                                            "PREFECT_LOGGING_LEVEL": "INFO"}, deploy=False)
    try:  # make serve's steps, with the two deployments the tests use (all of them: tests/test_deployments.py)
        local.prefect("work-pool", "create", devserver.WORK_POOL, "--type", "process")
        local.prefect("--no-prompt", "deploy", "--name", "backup", "--name", "restore")
        local.start_worker(devserver.WorkerSpec(devserver.WORK_POOL, devserver.DEFAULT_WORKER))
        yield local, inventory
    finally:
        local.stop()
    drop_database(pg_cluster, demo_db)
    drop_database(pg_cluster, prod_db)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "scripts/setup.sh installs chromium, chromium-driver"
    profile = tempfile.mkdtemp(prefix="odoops-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # selenium never looks for a driver download
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def evidence(driver, folder: Path, name: str):
    """On failure keep what the browser showed: a screenshot and the page's HTML."""
    try:
        yield
    except BaseException:
        folder.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(folder / f"{name}.png"))
        (folder / f"{name}.html").write_text(driver.page_source)
        print(f"browser evidence (screenshot, HTML) in {folder}")
        raise


def _wait(driver, xpath: str, seconds: float = 30, what: str | None = None):
    """The first visible element matching ``xpath``, waiting for the single-page app to render it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + seconds
    while True:
        try:
            found = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
        except StaleElementReferenceException:
            found = []
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"not shown after {seconds:.0f} s: {what or xpath}"
        time.sleep(0.25)


def _click(driver, xpath: str, seconds: float = 30, what: str | None = None):
    element = _wait(driver, xpath, seconds, what)
    element.click()
    return element


def _press(driver, dialog, label: str, attempts: int = 3) -> None:
    """Click a dialog's button until the dialog closes: the form re-validates what was just typed, and a
    click landing meanwhile is ignored (as a person would, click again)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(attempts):
        time.sleep(0.5)
        try:
            button = dialog.find_element("xpath", f".//button[normalize-space()={label!r}]")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            button.click()
        except StaleElementReferenceException:
            return
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                if not dialog.is_displayed():
                    return
            except StaleElementReferenceException:
                return
            time.sleep(0.2)
    raise AssertionError(f"the dialog stayed open after {attempts} clicks on {label}")


def _state_badge(state: str) -> str:
    return f"//span[@data-slot='badge'][normalize-space()='{state}']"


def _tab_text(driver, tab: str, expected: str, seconds: float = 45) -> str:
    """Open a run page's tab and wait until its panel shows ``expected``; returns the panel's text.

    A run's process sends its last logs in a batch as it exits, just after the run is Completed, and the
    page does not fetch them again by itself: like an operator, reload the page until they are there."""
    deadline = time.monotonic() + seconds
    while True:
        _click(driver, f"//*[@role='tab'][normalize-space()='{tab}']", what=f"the {tab} tab")
        try:
            return _wait(driver, f"//*[@role='tabpanel'][contains(., {expected!r})]", 5,
                         f"{expected!r} in the {tab} tab").text
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            driver.refresh()


def test_backup_from_the_deployment_page_logs_and_artifacts(served, browser, tmp_path):
    local, inventory = served
    ui = f"http://127.0.0.1:{local.port}"
    from selenium.webdriver.common.keys import Keys

    with evidence(browser, tmp_path, "backup-run"):
        browser.get(ui)  # what an operator opens: the UI's start page
        _click(browser, "//nav//a[normalize-space()='Deployments'] | //a[normalize-space()='Deployments']",
               what="the Deployments link")
        _click(browser, "//a[normalize-space()='backup'][contains(@href, '/deployments/deployment/')]",
               what="the backup deployment")
        _click(browser, "//button[normalize-space()='Run']", what="the Run button")
        _click(browser, "//*[@role='menuitem'][normalize-space()='Quick run']")
        dialog = _wait(browser, "//*[@role='dialog'][.//label[normalize-space()='environment']]",
                       what="the run's parameters")
        field = dialog.find_element("xpath", ".//label[normalize-space()='environment']/ancestor::div"
                                             "[contains(@class, 'group')][1]//textarea")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("demo")
        _press(browser, dialog, "Run")
        _click(browser, "//a[normalize-space()='View run']", what="the toast's link to the new run")
        _wait(browser, _state_badge("Completed"), 120, "the run Completed")
        run_id = browser.current_url.rstrip("/").split("/")[-1].split("?")[0]
        assert "backup/demo/" in _wait(browser, "//*[starts-with(normalize-space(), 'backup/demo/')]").text

        repo = repository_for(load_inventory(inventory), "local")
        [backup] = repo.list_backups("demo")
        logs = _tab_text(browser, "Logs", f"backup {backup.id} of demo committed to local")
        assert "bytes (database dump and" in logs and "Finished in state Completed" in logs
        artifacts = _tab_text(browser, "Artifacts", "backup-summary")
        assert "backup-parts" in artifacts and f"Parts of backup {backup.id}" in artifacts
        _click(browser, "//*[normalize-space()='backup-summary']", what="the backup-summary artifact")
        _wait(browser, f"//h2[contains(., 'Backup {backup.id}')]", what="the summary rendered")
        page = browser.find_element("xpath", "//body").text
        assert "environment demo (staging), kind manual" in page and "attachments whose file is missing: 0" in page
    [record] = [r for r in read_audit(repo.store, "demo") if r["flow_run_id"] == run_id]
    assert record["outcome"] == "success" and record["who"] == "deployment:backup (UI or API)"
    if SCREENSHOT_TO:  # the README's picture: the completed run, its task graph and its log
        browser.set_window_size(1400, 1500)
        browser.get(f"{ui}/v2/runs/flow-run/{run_id}?tab=Logs")
        _wait(browser, _state_badge("Completed"))
        _wait(browser, "//*[@role='tabpanel'][contains(., 'committed to local')]")
        time.sleep(5)  # the task graph is drawn on a canvas, after the page
        browser.save_screenshot(SCREENSHOT_TO)


def test_production_restore_approved_through_the_pause_form(served, browser, tmp_path):
    local, inventory = served
    ui = f"http://127.0.0.1:{local.port}"
    production = load_inventory(inventory).environment("production")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.postgres import ConnInfo, connect

    conninfo = ConnInfo.from_dsn(production.database.dsn)
    with connect(conninfo) as conn:  # a change the restore must replace, visibly
        conn.execute("UPDATE res_partner SET name = 'changed since the sample' WHERE id = 1")

    def partner_name() -> str:
        with connect(conninfo) as conn:
            return conn.execute("SELECT name FROM res_partner WHERE id = 1").fetchone()[0]

    async def start_restore():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("restore/restore")
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"source": str(SAMPLE_ZIP), "environment": "production"})
            deadline = time.monotonic() + 120
            while not (run := await client.read_flow_run(run.id)).state.is_paused():
                assert not run.state.is_final() and time.monotonic() < deadline, run.state
                await asyncio.sleep(0.5)
            return run

    async def final_state(run_id):
        async with get_client() as client:
            deadline = time.monotonic() + 180
            while not (run := await client.read_flow_run(run_id)).state.is_final():
                assert time.monotonic() < deadline, run.state
                await asyncio.sleep(0.5)
            return run

    with temporary_settings({PREFECT_API_URL: local.api_url}):
        paused = asyncio.run(start_restore())
    assert partner_name() == "changed since the sample"  # nothing touched while it waits

    with evidence(browser, tmp_path, "restore-approval"):
        browser.get(ui)
        _click(browser, "//a[normalize-space()='Runs']", what="the Runs link")
        _click(browser, f"//a[normalize-space()={paused.name!r}]", what="the paused run in the list")
        _wait(browser, _state_badge("Paused"), what="the run Paused")
        _click(browser, "//button[normalize-space()='Open menu']", what="the run's menu")
        _click(browser, "//*[@role='menuitem'][normalize-space()='Resume']")
        dialog = _wait(browser, "//*[@role='dialog'][contains(., 'Resume Flow Run')]", what="the pause form")
        assert "Type its name to replace its database and filestore" in dialog.text  # the flow's own description
        dialog.find_element("xpath", ".//textarea").send_keys("production")
        _press(browser, dialog, "Resume")
        _wait(browser, _state_badge("Completed"), 180, "the restore Completed")
    with temporary_settings({PREFECT_API_URL: local.api_url}):
        done = asyncio.run(final_state(paused.id))
    assert done.state.is_completed(), (done.state, (local.home / "prefect-worker.log").read_text()[-3000:])
    assert partner_name() != "changed since the sample"
    repo = repository_for(load_inventory(inventory), "local")
    [pre_restore] = [b for b in repo.list_backups("production") if b.kind == "pre-restore"]
    [record] = [r for r in read_audit(repo.store, "production")
                if r["runbook"] == "restore" and r["flow_run_id"] == str(paused.id)]
    assert record["outcome"] == "success" and record["backup_ids"] == [pre_restore.id]
    assert record["who"] == "deployment:restore (UI or API)"
