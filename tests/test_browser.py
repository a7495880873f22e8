"""The MLflow UI of a finished sweep, as a person sees it: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) opens what `gentune ui` prints for the session's smoke sweep, shows every
trial run with its study's metric in the runs table, and compares two runs. Values are checked against what
MlflowClient reads from the same store, formatted the way the UI formats them. Screenshots go to
$GENTUNE_SCREENSHOTS, else <pytest's basetemp>/artifacts/screenshots.

Skipped only where /usr/bin/chromium is absent and $CI is unset; in CI (scripts/install_browser.sh installs
the browser) a missing browser fails the test.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.test_ui import free_port, mlflow_trials, ui_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 120  # seconds for the React app to fetch and render on a busy 2-core machine

NAME_CELL = ".ag-row [col-id='attributes.`Run Name`']"


def js_number(v: float) -> str:
    """JavaScript's String(v) for a double (ECMAScript Number::toString): what the runs table prints."""
    if v == 0:
        return "0"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    sign, digits, exp = Decimal(repr(v)).as_tuple()  # repr: the shortest digits that round-trip, as JS uses
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    k = len(ds)
    n = exp + len(digits)  # v = 0.ds * 10**n
    s = "-" if sign else ""
    if k <= n <= 21:
        return s + ds + "0" * (n - k)
    if 0 < n <= 21:
        return s + ds[:n] + "." + ds[n:]
    if -6 < n <= 0:
        return s + "0." + "0" * (-n) + ds
    e = n - 1
    return s + ds[0] + ("." + ds[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def js_exponential3(v: float) -> str:
    """JavaScript's v.toExponential(3)."""
    m, e = f"{v:.3e}".split("e")
    return f"{m}e{'+' if int(e) >= 0 else '-'}{abs(int(e))}"


def ui_metric(v: float) -> str:
    """MLflow UI's Utils.formatMetric (compare page): 3 decimals below 10, 2 below 100, else 1."""
    if v == 0:
        return "0"
    if abs(v) < 0.001:
        return js_exponential3(v)
    scale = 1000 if abs(v) < 10 else 100 if abs(v) < 100 else 10
    return js_number(math.floor(v * scale + 0.5) / scale)  # Math.round


def test_js_formatting_helpers():
    assert [js_number(x) for x in (0.0, 1.0, 0.1, 0.08611111111111111, 0.20000000298023224, 1e-7, 123456.5, 2e21, -0.5)] == \
        ["0", "1", "0.1", "0.08611111111111111", "0.20000000298023224", "1e-7", "123456.5", "2e+21", "-0.5"]
    assert [ui_metric(x) for x in (0.0, 0.08611111111111111, 7.2428, 0.58, 12.345, 1234.56, 0.0001234)] == \
        ["0", "0.086", "7.243", "0.58", "12.35", "1234.6", "1.234e-4"]


# ---------------------------------------------------------------- fixtures


def need_browser() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("no /usr/bin/chromium (install it with scripts/install_browser.sh)")
    pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: run scripts/install_browser.sh (apt chromium chromium-driver)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("GENTUNE_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "artifacts" / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def ui(smoke_sweep, tmp_path_factory):
    need_browser()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with ui_server([str(smoke_sweep["root"]), "--port", str(free_port())], log) as s:
        yield s


@pytest.fixture(scope="module")
def driver():
    need_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gentune-chromium-")
    o = Options()
    o.binary_location = str(CHROMIUM)
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=2000,1200", f"--user-data-dir={profile}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=o)
    d.set_page_load_timeout(WAIT)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def store(smoke_sweep) -> dict:
    """What MlflowClient reads: trial runs, each study's metric, and the study runs."""
    from mlflow.tracking import MlflowClient

    info = smoke_sweep["info"]
    trials = mlflow_trials(smoke_sweep["tracking_uri"], info["experiment_id"])
    studies = [r for r in MlflowClient(tracking_uri=smoke_sweep["tracking_uri"]).search_runs([info["experiment_id"]])
               if r.data.tags.get("gentune.kind") == "study"]
    metric = {s: m for s, (m, _mode) in info["metrics"].items()}
    assert trials and studies
    return {"trials": trials, "studies": studies, "metric": metric, "exp": info["experiment_id"], "name": info["name"]}


class Page:
    """Waiting, reading and screenshots over one driver."""

    def __init__(self, d, shots: Path, prefix: str) -> None:
        self.d, self.shots, self.prefix = d, shots, prefix

    def until(self, cond, what: str, timeout: float = WAIT):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.5).until(lambda d: cond())
        except TimeoutException:
            shot = self.snap(f"FAILED-{what.replace(' ', '_')[:40]}")
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; screenshot {shot}\n"
                                 f"page text:\n{self.d.find_element('tag name', 'body').text[:3000]}") from None

    def snap(self, name: str) -> Path:
        p = self.shots / f"{self.prefix}_{name}.png"
        self.d.save_screenshot(str(p))
        return p

    def css(self, sel: str) -> list:
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def click(self, el) -> None:
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        el.click()


def table(d) -> dict[str, dict[str, str]]:
    """The runs table as shown: {row id (= run id): {column id: rendered text}}. ag-grid splits a row over its
    pinned and scrolling containers, all with the same row-id."""
    return d.execute_script("""
        const out = {};
        for (const r of document.querySelectorAll('.ag-row')) {
          const id = r.getAttribute('row-id'); const o = out[id] = out[id] || {};
          for (const c of r.querySelectorAll('.ag-cell')) {
            const col = c.getAttribute('col-id'); const a = c.querySelector('a');
            o[col] = (col === 'attributes.`Run Name`' && a ? a.innerText : c.innerText).trim();
          }
        }
        return out;""")


def show_metric_column(p: Page, metric: str) -> None:
    """Columns -> search the metric -> tick it, as a user adds a column to the runs table."""
    from selenium.webdriver.common.keys import Keys

    col = f"metrics.`{metric}`"
    if p.css(f".ag-header-cell[col-id='{col}']"):
        return
    p.click(p.until(lambda: (p.css("[data-testid=column-selection-dropdown]") or [None])[0], "the Columns button"))
    box = p.until(lambda: (p.css("input[placeholder='Search columns']") or [None])[0], "the column search box")
    box.send_keys(metric)

    def node():
        for n in p.css("[role=dialog] .du-bois-light-tree-treenode"):
            if n.text.strip() == metric:
                return n
        return None

    n = p.until(node, f"metric {metric} in the column chooser")
    if "checkbox-checked" not in (n.get_attribute("class") or ""):
        n.find_element("css selector", ".du-bois-light-tree-checkbox").click()
    box.send_keys(Keys.ESCAPE)
    p.until(lambda: p.css(f".ag-header-cell[col-id='{col}']"), f"the {metric} column")


def open_trials_table(p: Page, ui, store: dict) -> None:
    """The experiment's runs table with every trial run shown (nested runs expanded) and each study's metric."""
    trial_ids = {r.info.run_id for r in store["trials"]}
    study_ids = {r.info.run_id for r in store["studies"]}
    p.d.get(ui.url)
    p.until(lambda: p.css(NAME_CELL + " a"), "the runs table")
    p.until(lambda: study_ids <= set(table(p.d)), "a row for each study's run")
    p.snap("1_runs_collapsed")
    for close in p.css("button[data-component-id='mlflow.assistant.chat_panel.close']"):
        p.click(close)  # the assistant side panel takes a third of the width
    # Trial runs are nested under their study's run, collapsed: expand each study once.
    for rid in sorted(study_ids):
        if trial_ids <= set(table(p.d)):
            break
        btn = p.until(lambda rid=rid: p.css(f".ag-row[row-id='{rid}'] [col-id='attributes.`Run Name`'] button"),
                      f"the expander of study run {rid}")[0]
        p.click(btn)
    p.until(lambda: trial_ids <= set(table(p.d)), "every trial run's row after expanding the study runs")
    for m in sorted(set(store["metric"].values())):
        show_metric_column(p, m)


# ---------------------------------------------------------------- tests


def test_runs_table_shows_every_trial_with_its_metric(driver, ui, store, shots):
    p = Page(driver, shots, "runs")
    assert "/#/experiments/" + store["exp"] in ui.url
    open_trials_table(p, ui, store)
    assert p.d.find_element("css selector", "body").text.count(store["name"]) >= 1  # the experiment, by name
    metrics = sorted(set(store["metric"].values()))

    def expected() -> dict[str, dict[str, str]]:
        want = {}
        for r in store["trials"]:
            m = store["metric"][r.data.tags["gentune.study"]]
            row = {"attributes.`Run Name`": r.info.run_name}
            for other in metrics:
                v = r.data.metrics.get(other)
                row[f"metrics.`{other}`"] = js_number(v) if v is not None else "-"
            assert m in r.data.metrics, f"trial run {r.info.run_name} has no {m}"
            want[r.info.run_id] = row
        return want

    want = expected()

    def mismatches() -> list[str]:
        shown = table(p.d)
        bad = []
        for rid, cols in want.items():
            got = shown.get(rid, {})
            for col, text in cols.items():
                if got.get(col) != text:
                    bad.append(f"{cols['attributes.`Run Name`']} {col}: page shows {got.get(col)!r}, store has {text!r}")
        return bad

    try:
        p.until(lambda: not mismatches(), "the trial runs' names and metric values")
    except AssertionError:
        raise AssertionError("\n".join(mismatches())) from None
    shot = p.snap("2_trials_with_metrics")
    # and those cells are on screen, not merely in the DOM
    for r in store["trials"][:3]:
        cell = p.css(f".ag-row[row-id='{r.info.run_id}'] [col-id='attributes.`Run Name`'] a")[0]
        assert cell.is_displayed() and cell.text == r.info.run_name
    assert shot.stat().st_size > 10_000


def test_compare_two_trials(driver, ui, store, shots):
    p = Page(driver, shots, "compare")
    # Two trials of one study that reported its metric. The compare page lists metrics alphabetically in a box
    # about six rows high, and MLflow 3.17 does not scroll the names column along with the values (seen in
    # headless Chromium with the wheel and with scripts alike): pick the study whose metric comes earliest, so
    # its row shows, named, without scrolling.
    by_study: dict[str, list] = {}
    for r in store["trials"]:
        s = r.data.tags["gentune.study"]
        if store["metric"][s] in r.data.metrics:
            by_study.setdefault(s, []).append(r)
    assert any(len(v) >= 2 for v in by_study.values()), f"no study has two trials with its metric: {by_study}"

    def row_index(s: str) -> int:
        keys = sorted({k for r in by_study[s][:2] for k in r.data.metrics})
        return keys.index(store["metric"][s])

    study = min((s for s in sorted(by_study) if len(by_study[s]) >= 2), key=row_index)
    pair = sorted(by_study[study], key=lambda r: r.info.run_name)[:2]
    metric = store["metric"][study]

    open_trials_table(p, ui, store)
    for r in pair:  # tick the two rows, then Compare, as a user does
        box = p.until(lambda r=r: p.css(f".ag-row[row-id='{r.info.run_id}'] input[type=checkbox]"), f"checkbox of {r.info.run_name}")
        p.click(box[0])
    p.click(p.until(lambda: (p.css("[data-testid=runs-compare-button]") or [None])[0], "the Compare button"))
    p.until(lambda: "#/compare-runs" in p.d.current_url, "the compare-runs page")
    url = unquote(p.d.current_url)
    runs = json.loads(url.split("runs=", 1)[1].split("&", 1)[0])
    assert set(runs) == {r.info.run_id for r in pair}
    assert json.loads(url.split("experiments=", 1)[1].split("&", 1)[0]) == [store["exp"]]
    p.until(lambda: "Comparing 2 Runs" in p.d.find_element("css selector", "body").text, "the compare page heading")

    def names_row() -> list[str]:
        return p.d.execute_script("""
            for (const tr of document.querySelectorAll('table.mlflow-compare-run-table tr')) {
              const cells = [...tr.children].map(c => c.innerText.trim());
              if (cells[0] === 'Run Name:') return cells.slice(1);
            }
            return [];""")

    order = {r.info.run_id: r for r in pair}
    want_names = [order[rid].info.run_name for rid in runs]
    p.until(lambda: names_row() == want_names, f"run names {want_names} in the compare table")
    p.snap("2_compare_page")

    def metric_row() -> list[str] | None:
        # The Metrics section: a grid of names and a grid of values, one row per metric, one column per run.
        return p.d.execute_script("""
            const [metric] = arguments;
            const hdr = [...document.querySelectorAll('.du-bois-light-collapse-header')]
                          .find(h => h.textContent.trim().startsWith('Metrics'));
            if (!hdr) return null;
            hdr.scrollIntoView({block: 'start'});
            const grids = hdr.parentElement.querySelectorAll('[role=grid]');
            if (grids.length < 2) return null;
            const cells = g => [...g.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > *')];
            const row = cells(grids[0]).find(c => c.textContent.trim() === metric);
            if (!row) return null;
            const vals = cells(grids[1]).filter(c => c.style.top === row.style.top)
                   .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left));
            const inside = (el, g) => { const r = el.getBoundingClientRect(), b = g.getBoundingClientRect();
                                        return r.height > 0 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1; };
            if (!inside(row, grids[0]) || !vals.every(v => inside(v, grids[1]))) return ['(row out of view)'];
            return vals.map(c => c.innerText.trim());""", metric)

    want = [ui_metric(order[rid].data.metrics[metric]) for rid in runs]
    p.until(lambda: metric_row() == want, f"{metric} = {want} in the compare page's Metrics")
    time.sleep(0.5)  # let the scroll settle before the picture
    assert p.snap("3_metrics").stat().st_size > 10_000
