"""A real browser drives notebook 02's live widgets in JupyterLab, started as `make lab` starts it.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them; elsewhere the test is skipped unless
LAVISE_NB_REQUIRE_BROWSER is set), selenium and jupyterlab (the test extra and the dependencies).
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NOTEBOOK = "02_explain_filters.ipynb"
PARAMETERS = dict(n_images=200, seed=0, p=5, s=3, top_words=5, n_cards=1, compare=False, faithfulness=False,
                  interactive=True,
                  show_progress=False)  # + output_dir: a copy of notebook 01's train/ (tests/conftest.py)
SCREENSHOTS = Path(tempfile.gettempdir()) / "lavise-nb-browser"
WIDGET_ERRORS = ("Error displaying widget", "Model not found", "model not found", "Failed to load model class")

_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if _missing and not os.environ.get("LAVISE_NB_REQUIRE_BROWSER"):
    pytest.skip(f"no system browser: {', '.join(_missing)} missing (apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (pip install -e .)")
papermill = pytest.importorskip("papermill")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def lab(trained_notebook, tmp_path_factory):
    """JupyterLab via scripts/lab.py on a temp root holding notebook 02 with small parameters."""
    trained, _ = trained_notebook
    base = tmp_path_factory.mktemp("lab")
    out, root = base / "output", base / "root"
    shutil.copytree(trained / "train", out / "train")  # 02 writes out/explain/, apart from the other tests
    root.mkdir()
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # papermill's own injection: an "injected-parameters" cell after the "parameters" cell
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / NOTEBOOK)),
                               dict(PARAMETERS, output_dir=str(out)))
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, root / NOTEBOOK)

    # Jupyter's config, data and runtime folders are the test's own (no user settings, workspaces or kernels),
    # with the project's kernel registered there as `make setup` registers it for the user.
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    news = base / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "official Jupyter news?" toast over the screenshots
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "lavise-nb",
                    "--display-name", "Python (lavise-nb)"], env=env, check=True, capture_output=True)
    port, token = _free_port(), "lavise-nb-browser-test"
    log = (base / "lab.log").open("w")
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "lab.py"), "--port", str(port),
                               "--token", token, "--root-dir", str(root)],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(f"scripts/lab.py exited with {server.returncode}:\n{(base / 'lab.log').read_text()}")
            try:
                specs = _get(f"{url}/api/kernelspecs?token={token}")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer on {url}:\n{(base / 'lab.log').read_text()}")
        yield dict(url=url, token=token, root=root, out=out, specs=specs, log=base / "lab.log")
    finally:
        try:  # shuts the kernels down too (they run in sessions of their own)
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST"),
                                   timeout=10).close()
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
        log.close()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "lab.log", SCREENSHOTS / "lab.log")  # the server's log, beside the screenshots


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--window-size=1400,1100", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _cell(driver, marker: str):
    """The notebook's code cell whose source contains ``marker``."""
    for cell in driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"):
        if marker in cell.find_element(By.CSS_SELECTOR, ".jp-InputArea-editor").get_attribute("textContent"):
            return cell
    raise AssertionError(f"no code cell contains {marker!r}")


def _images(element) -> list:
    return [img.get_attribute("src") for img in element.find_elements(By.CSS_SELECTOR, ".jp-OutputArea img")]


def _html(element, selector: str) -> str:
    return "".join(e.get_attribute("outerHTML") for e in element.find_elements(By.CSS_SELECTOR, selector))


def _wait(driver, timeout: float, what: str, condition):
    try:
        # an output re-rendered while it is read (the very change waited for) leaves stale elements: poll again
        return WebDriverWait(driver, timeout, poll_frequency=0.5,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition())
    except TimeoutException:
        shot = SCREENSHOTS / "timeout.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (screenshot {shot})") from None


def _page_problems(driver) -> list:
    text = driver.find_element(By.TAG_NAME, "body").get_attribute("innerText")
    problems = [e for e in WIDGET_ERRORS if e in text]
    errors = driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    dialogs = driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog")  # e.g. "Select Kernel": nothing should ask
    return problems + [e.get_attribute("innerText")[-2000:] for e in errors + dialogs]


def _search_target(explanations: pd.DataFrame, current: int) -> tuple[str, int]:
    """A word whose first filter (as FilterBrowser.search ranks them) is not ``current``."""
    named = explanations.dropna(subset=["word"])
    for word in named[named["rank"] == 1]["word"].astype(str):
        if not word.isalpha():
            continue
        exact = named[named["word"].astype(str).str.lower() == word.lower()]
        first = int(exact.sort_values(["rank", "votes"], ascending=[True, False])["filter"].iloc[0])
        if first != current:
            return word.lower(), first
    raise AssertionError("no word leads to another filter")


@pytest.mark.notebook
def test_notebook_02_widgets_work_in_jupyterlab(lab, browser):
    started = time.monotonic()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert lab["specs"]["default"] == "lavise-nb" and "python3" in lab["specs"]["kernelspecs"]
    assert f"{lab['url']}/lab?token={lab['token']}" in lab["log"].read_text()  # lab.py prints the URL

    browser.get(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")

    def idle():  # the server's session for the notebook has a kernel, idle, and the page says so
        sessions = _get(f"{lab['url']}/api/sessions?token={lab['token']}")
        kernels = [s["kernel"] for s in sessions if s.get("path", "").endswith(NOTEBOOK) and s.get("kernel")]
        return (kernels and all(k["execution_state"] == "idle" for k in kernels) and browser.find_elements(
            By.CSS_SELECTOR, '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]'))

    _wait(browser, 120, "the notebook and its kernel, idle", idle)

    # Run > Run All Cells (the menu's item runs runmenu:run-all, which calls notebook:run-all-cells)
    menu = next(m for m in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if m.text.strip() == "Run")
    menu.click()
    _wait(browser, 10, "the Run menu", lambda: browser.find_elements(
        By.CSS_SELECTOR, 'li[data-command="runmenu:run-all"], li[data-command="notebook:run-all-cells"]'))[0].click()

    def finished():
        prompts = [p.get_attribute("textContent").strip()
                   for p in browser.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea-prompt")]
        done = prompts and all(p[1:-2].strip().isdigit() for p in prompts)  # "[12]:"
        return (done and idle()) or _page_problems(browser)

    _wait(browser, 180, "every cell to run", finished)
    assert not _page_problems(browser), _page_problems(browser)
    ran_s = time.monotonic() - started

    # the filter browser: slider, search box, words table and card
    cell = _cell(browser, "filter_browser(")
    _wait(browser, 30, "the filter browser's widgets", lambda: cell.find_elements(
        By.CSS_SELECTOR, ".widget-slider .noUi-handle") and _images(cell) and _html(cell, ".jp-OutputArea table"))
    readout = cell.find_element(By.CSS_SELECTOR, ".widget-readout")
    first = int(readout.get_attribute("textContent"))
    card, table = _images(cell), _html(cell, ".jp-OutputArea table")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", cell)
    browser.save_screenshot(str(SCREENSHOTS / "01_filter_browser.png"))

    handle = cell.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    handle.send_keys(Keys.ARROW_RIGHT if first < 319 else Keys.ARROW_LEFT)
    moved = first + 1 if first < 319 else first - 1
    _wait(browser, 60, "the card of the next filter", lambda: _images(cell) and _images(cell) != card
          and _html(cell, ".jp-OutputArea table") != table)
    assert int(readout.get_attribute("textContent")) == moved
    card, table = _images(cell), _html(cell, ".jp-OutputArea table")

    explanations = pd.read_csv(lab["out"] / "explain" / "explanations.csv")
    word, target = _search_target(explanations, moved)
    box = cell.find_element(By.CSS_SELECTOR, ".widget-text input")
    box.click()
    box.send_keys(word, Keys.ENTER)
    _wait(browser, 60, f"the search for {word!r} (filter {target})",
          lambda: f"filter <b>{target}</b>" in _html(cell, ".widget-html-content")
          and _images(cell) != card and int(readout.get_attribute("textContent")) == target)
    assert _html(cell, ".jp-OutputArea table") != table and len(_images(cell)) == 1
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", cell)
    browser.save_screenshot(str(SCREENSHOTS / "02_filter_browser_search.png"))

    # the reverse look-up: a new word redraws the bars
    lookup = _cell(browser, "lookup_widget(")
    _wait(browser, 30, "the look-up bars", lambda: _images(lookup))
    bars = _images(lookup)
    box = lookup.find_element(By.CSS_SELECTOR, ".widget-text input")
    assert box.get_attribute("value") == "wheel"
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("car", Keys.ENTER)
    _wait(browser, 60, "the look-up of 'car'", lambda: _images(lookup) and _images(lookup) != bars)
    assert "cannot look up" not in lookup.get_attribute("innerText")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", lookup)
    browser.save_screenshot(str(SCREENSHOTS / "03_lookup.png"))

    assert not _page_problems(browser), _page_problems(browser)
    print(f"notebook 02 ran in JupyterLab in {ran_s:.0f} s, widgets checked in "
          f"{time.monotonic() - started - ran_s:.0f} s; screenshots in {SCREENSHOTS}")
