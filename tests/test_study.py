"""colorbench study: the design, bad input, the web app and its report, many raters at
once over HTTP, and a real browser (headless Chromium) completing a study."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import main as cli
from downstream.study.design import load_manifest, rater_plan

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures: photos and studies

def _photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A colourful photo stand-in: a sky-to-ground gradient and a few coloured blocks."""
    img = np.zeros((h, w, 3), np.float64)
    img[:] = np.linspace([70, 120, 200], [90, 140, 60], h)[:, None, :]
    for _ in range(3):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y:y + rng.integers(6, h // 2), x:x + rng.integers(6, w // 2)] = rng.integers(30, 250, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _recolour(rgb: np.ndarray, method: str) -> np.ndarray:
    if method == "gray":  # chroma cut to 30%
        mean = rgb.mean(-1, keepdims=True)
        return np.clip(mean + 0.3 * (rgb - mean), 0, 255).astype(np.uint8)
    return np.clip(rgb * [1.0, 0.9, 0.7], 0, 255).astype(np.uint8)  # "warm": a colour cast


def make_folders(root: Path, n: int = 6, size=(40, 30), methods=("gray", "warm")) -> tuple[Path, dict]:
    """real/ (JPEG, half of them in a subfolder) and one folder of PNGs per method, as
    ``colorbench colorize`` writes them (same relative path, .png)."""
    rng = np.random.default_rng(0)
    real, dirs = root / "real", {m: root / m for m in methods}
    for i in range(n):
        rel = Path("sub" if i % 2 else ".") / f"img{i}"
        rgb = _photo(rng, *size)
        (real / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save((real / rel).with_suffix(".jpg"), quality=95)
        for m, d in dirs.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_recolour(rgb, m)).save((d / rel).with_suffix(".png"))
    return real, dirs


def create(root: Path, *extra: str, n: int = 6, methods=("gray", "warm")) -> Path:
    real, dirs = make_folders(root, n, methods=methods)
    out = root / "study"
    method_args = [a for m, d in dirs.items() for a in ("--method", f"{m}={d}")]
    assert cli(["study", "create", "--real", str(real), *method_args, "--out", str(out), *extra]) == 0
    return out


def pairs_of(study: Path) -> dict:
    return {p["id"]: p for p in load_manifest(study)["pairs"]}


# ---------------------------------------------------------------- the design

def test_create_writes_a_balanced_latin_design(tmp_path, capsys):
    study = create(tmp_path, n=8)
    assert "8 photos x 2 method(s) = 16 test pairs, 4 sanity, 2 practice; 14 trials per rater" in capsys.readouterr().out
    m = load_manifest(study)
    assert m["design"] == "latin" and m["blocks"] == 2 and m["exposure_ms"] == 1000 and m["dataset"] == "real"
    tests = [p for p in m["pairs"] if p["kind"] == "test"]
    assert sorted((p["photo"], p["method"]) for p in tests) == sorted(
        (f"{'sub/' if i % 2 else ''}img{i}", meth) for i in range(8) for meth in ("gray", "warm"))
    for block in (0, 1):  # one pair per photo in each block, both methods equally often
        mine = [p for p in tests if p["block"] == block]
        assert sorted(p["photo"] for p in mine) == sorted(m["photos"])
        assert sum(p["method"] == "gray" for p in mine) == 4
        assert abs(sum(p["fake"] == "left" for p in mine) - 4) <= 1  # left/right balanced
    for p in m["pairs"]:  # the two sides: same size, PNG, and file names that say nothing
        left, right = (Image.open(study / p[s]) for s in ("left", "right"))
        assert left.size == right.size == (40, 30) and left.format == right.format == "PNG"
        assert re.fullmatch(r"images/[0-9a-f]{16}\.png", p["left"]) and p["left"] != p["right"]
    sanity = [p for p in m["pairs"] if p["kind"] == "sanity"]
    swap = next(p for p in sanity if p["method"] == "sanity:channel_swap")
    real = np.asarray(Image.open(study / swap["right" if swap["fake"] == "left" else "left"]))
    fake = np.asarray(Image.open(study / swap[swap["fake"]]))
    assert np.array_equal(fake, real[..., ::-1])  # red and blue swapped
    # plans: practice first, the same order on every call, each photo once per rater,
    # and raters 0 and 1 together judge every test pair once
    plans = [rater_plan(m, k) for k in range(4)]
    assert plans[0] == rater_plan(m, 0) and plans[2] != plans[0]
    by_id = {p["id"]: p for p in m["pairs"]}
    for plan in plans:
        assert [by_id[x]["kind"] for x in plan[:2]] == ["practice", "practice"] and len(plan) == 14
        photos = [by_id[x]["photo"] for x in plan if by_id[x]["kind"] == "test"]
        assert sorted(photos) == sorted(m["photos"])
    assert {x for plan in plans[:2] for x in plan if by_id[x]["kind"] == "test"} == {p["id"] for p in tests}


def test_create_all_design_shrinks_images_and_takes_options(tmp_path):
    consent = tmp_path / "consent.txt"
    consent.write_text("Ethics board text.\n\nSecond paragraph.")
    study = create(tmp_path, "--design", "all", "--max-side", "20", "--exposure", "0.5", "--sanity", "3",
                   "--practice", "0", "--dataset-name", "builtin", "--consent", str(consent))
    m = load_manifest(study)
    assert m["blocks"] == 1 and m["exposure_ms"] == 500 and m["dataset"] == "builtin"
    assert m["consent_text"].startswith("Ethics board")
    plan = rater_plan(m, 5)
    assert len(plan) == 6 * 2 + 3
    by_id = pairs_of(study)
    photos = [by_id[x]["photo"] for x in plan]
    assert all(a != b for a, b in zip(photos, photos[1:]))  # no photo twice in a row
    assert Image.open(study / m["pairs"][0]["left"]).size == (20, 15)


# ---------------------------------------------------------------- bad input: one line, exit 2

def _break_missing(real, dirs):
    (dirs["warm"] / "sub" / "img3.png").unlink()
    return "lacks colorizations of 1 of 6 photos: sub/img3"


def _break_size(real, dirs):
    Image.new("RGB", (41, 30), (9, 9, 9)).save(dirs["gray"] / "img2.png")
    return "differ in size from the ground truth, e.g. img2: 41x30 vs ground truth 40x30"


def _break_corrupt(real, dirs):
    (dirs["gray"] / "img0.png").write_bytes(b"not a png")
    return "img0.png: not a readable image"


def _break_truncated(real, dirs):  # the header reads; the pixels do not (found after writing began)
    path = dirs["warm"] / "img4.png"
    path.write_bytes(path.read_bytes()[:200])
    return "warm/img4.png: truncated"


def _break_duplicate(real, dirs):
    Image.new("RGB", (40, 30)).save(real / "img0.png")
    return "two images share the name 'img0'"


@pytest.mark.parametrize("breaker", [_break_missing, _break_size, _break_corrupt, _break_truncated, _break_duplicate])
def test_bad_input_folders_give_one_line_and_exit_2(tmp_path, capsys, breaker):
    real, dirs = make_folders(tmp_path)
    expected = breaker(real, dirs)
    rc = cli(["study", "create", "--real", str(real), "--method", f"gray={dirs['gray']}",
              "--method", f"warm={dirs['warm']}", "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("colorbench study: error:")
    assert not (tmp_path / "study").exists() and not list(tmp_path.glob(".study*"))  # nothing half-made


@pytest.mark.parametrize("args, expected", [
    (["--method", "gray"], "expected NAME=DIR"),
    (["--method", "a b=x"], "the name may hold"),
    (["--method", "gray={gray}", "--method", "gray={warm}"], "--method names must differ"),
    ([], "give at least one --method"),
    (["--method", "gray={gray}", "--exposure", "0"], "--exposure 0.0: expected seconds"),
    (["--method", "gray={tmp}/nowhere"], "no such folder"),
])
def test_bad_create_arguments(tmp_path, capsys, args, expected):
    real, dirs = make_folders(tmp_path)
    args = [a.format(gray=dirs["gray"], warm=dirs["warm"], tmp=tmp_path) for a in args]
    assert cli(["study", "create", "--real", str(real), *args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_existing_study_and_non_study_folders_are_refused(tmp_path, capsys):
    study = create(tmp_path)
    real, dirs = tmp_path / "real", {"gray": tmp_path / "gray"}
    assert cli(["study", "create", "--real", str(real), "--method", f"gray={dirs['gray']}", "--out", str(study)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert cli(["study", "report", str(study)]) == 2  # nobody has answered yet
    assert "no answers yet" in capsys.readouterr().err
    for action in ("serve", "report"):
        assert cli(["study", action, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "not a study folder (no manifest.json)" in err and err.count("\n") == 1


# ---------------------------------------------------------------- the app, in process

def _answer(client, rater, pid, choice, **extra):
    return client.post(f"/api/raters/{rater}/answers", json={"pair": pid, "choice": choice, "response_ms": 700,
                                                             "shown_ms": 1000, **extra})


def _complete(client, study, policy, stop_after=None) -> str:
    """One rater through the app: ``policy(pair) -> 'fake' | 'real'`` (the side they call fake)."""
    pairs = pairs_of(study)
    state = client.post("/api/raters", json={"consent": True, "viewport": "390x844"}).get_json()
    rater, n = state["rater"], 0
    while state["trial"] and (stop_after is None or n < stop_after):
        pair = pairs[state["trial"]["pair"]]
        called_fake = pair["fake"] if policy(pair) == "fake" else {"left": "right", "right": "left"}[pair["fake"]]
        state = _answer(client, rater, pair["id"], called_fake).get_json()
        assert state["recorded"] and state["done"] == n + 1
        assert ("feedback" in state) == (pair["kind"] == "practice")
        n += 1
    return rater


def test_app_stores_answers_resumes_and_reports(tmp_path, capsys):
    from downstream.study.app import create_app

    study = create(tmp_path)
    client = create_app(study).test_client()
    page = client.get("/").get_data(as_text=True)
    assert "12 pairs of photos" in page and "<b>1 second</b>" in page and "first 2 pairs are practice" in page
    assert client.post("/api/raters", json={}).status_code == 400  # no consent, no rater

    # rater 0 (block 0): calls every gray colorization real, spots every warm one
    r0 = _complete(client, study, lambda p: "real" if p["method"] == "gray" else "fake")
    # rater 1 (block 1): calls every test colorization real, passes the sanity pairs
    _complete(client, study, lambda p: "fake" if p["kind"] in ("sanity", "practice") else "real")
    # rater 2: misses the sanity pairs -> excluded
    _complete(client, study, lambda p: "real" if p["kind"] == "sanity" else "fake")
    # rater 3: leaves after a sanity pair and before the end, and comes back
    plan3 = rater_plan(load_manifest(study), 3)
    stop = 1 + max(3, next(i for i, x in enumerate(plan3) if pairs_of(study)[x]["kind"] == "sanity"))
    assert stop < 12
    r3 = _complete(client, study, lambda p: "fake", stop_after=stop)
    state = client.get(f"/api/raters/{r3}").get_json()
    assert state["done"] == stop and state["total"] == 12 and state["trial"]["pair"] == plan3[stop]
    assert "fake" not in json.dumps(state) and "sanity" not in json.dumps(state)  # nothing gives the answer away

    # repeats and bad answers change nothing
    first = rater_plan(load_manifest(study), 0)[3]
    assert _answer(client, r0, first, "left").get_json()["recorded"] is False
    assert _answer(client, r0, "p9999", "left").status_code == 400
    assert _answer(client, r3, state["trial"]["pair"], "up").status_code == 400
    assert _answer(client, r3, state["trial"]["pair"], "left", response_ms="fast").status_code == 400
    assert _answer(client, "0" * 32, first, "left").status_code == 404
    assert client.get("/img/p0001/left").content_type == "image/png"
    assert client.get("/img/p0001/middle").status_code == 404
    with sqlite3.connect(study / "answers.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == 12 * 3 + stop

    assert cli(["study", "report", str(study)]) == 0
    out = capsys.readouterr().out
    assert "4 consented, 3 finished; included 2; excluded 1 who missed more than 0 sanity pair(s) and 1 unfinished" in out
    run = study / "realism-study"
    payload = json.loads((run / "metrics.json").read_text())
    got = {(r["method"], r["metric"]): r["value"] for r in payload["records"]}
    for r in payload["records"]:
        assert r["protocol"] == "realism_2afc" and r["split"] == "test" and r["suite"] == "colorization"
    # gray: 3 of 3 labelled real by each included rater; warm: 0 of 3 (rater 0) + 3 of 3 (rater 1)
    assert got[("gray", "labelled_real")] == 100.0 and got[("gray", "judgements")] == 6
    assert got[("warm", "labelled_real")] == 50.0 and got[("warm", "raters")] == 2
    assert got[("warm", "labelled_real_se")] == pytest.approx(100 * math.sqrt(0.25 / 6), abs=1e-3)
    z, n = 1.959963985, 6  # Wilson score interval for 3 of 6, by its formula
    half = z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert got[("warm", "labelled_real_ci_low")] == pytest.approx(100 * (0.5 - half), abs=1e-3)
    assert got[("warm", "labelled_real_ci_high")] == pytest.approx(100 * (0.5 + half), abs=1e-3)
    assert got[("", "raters_failed_sanity")] == 1 and got[("", "raters_unfinished")] == 1
    assert got[("", "sanity_accuracy")] == 100.0
    assert (run / "report.md").is_file() and len((run / "raters.csv").read_text().splitlines()) == 5

    # the realism column of Table 1 (colorbench table reads the run records)
    from benchmarks.tables import load_records, table1

    table = table1(load_records([study]).records)["table1_real"]
    assert sorted(table["amt_fooled_pct"].tolist()) == [50.0, 100.0]

    # an unfinished rater who passed the sanity pairs they saw can be counted on request
    assert cli(["study", "report", str(study), "--include-unfinished", "--out", str(tmp_path / "r2")]) == 0
    assert "included 3" in capsys.readouterr().out


# ---------------------------------------------------------------- over HTTP: the real server

@contextmanager
def serving(study: Path):
    """``colorbench study serve`` in a subprocess on a free loopback port; stopped with
    Ctrl-C (SIGINT) at the end, which must exit cleanly. Its output is drained all along (a
    full pipe would block the server's logging, waitress's "Task queue depth" warnings
    under load, and with it the Ctrl-C)."""
    # SIGINT back to its default in the child: a test run started in the background without job
    # control (`cmd &` in a script) ignores SIGINT, children inherit that, and Python then never
    # raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "study", "serve", str(study), "--port", "0",
                             "--host", "127.0.0.1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output: list[str] = []
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"no URL from the server: {line!r} {proc.stdout.read() if proc.poll() is not None else ''}"
        threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # a clean exit takes ~0.1 s; the bound only has to survive a stalled machine
            assert proc.wait(timeout=60) == 0, "".join(output[-20:])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as res:
        return json.loads(res.read())


@pytest.mark.slow
def test_many_raters_posting_at_once_lose_and_duplicate_nothing(tmp_path):
    study = create(tmp_path, "--practice", "1")
    n_raters, workers = 24, 24  # 24 raters x 11 trials, every answer sent twice: 528 posts
    manifest = load_manifest(study)
    with serving(study) as url, ThreadPoolExecutor(workers) as pool:
        raters = list(pool.map(lambda _: _post(url + "api/raters", {"consent": True})["rater"], range(n_raters)))
        with sqlite3.connect(study / "answers.sqlite") as db:
            index = dict(db.execute("SELECT id, num - 1 FROM raters"))
        assert sorted(index.values()) == list(range(n_raters))  # distinct, gapless rater indices
        jobs = [(r, pid, ("left", "right")[(i + k) % 2]) for r in raters
                for i, pid in enumerate(rater_plan(manifest, index[r])) for k in range(2)]
        np.random.default_rng(0).shuffle(jobs)
        replies = list(pool.map(lambda j: _post(f"{url}api/raters/{j[0]}/answers",
                                                {"pair": j[1], "choice": j[2], "response_ms": 500}), jobs))
    assert sum(r["recorded"] for r in replies) == len(jobs) // 2  # exactly one of each two copies stored
    with sqlite3.connect(study / "answers.sqlite") as db:
        rows = db.execute("SELECT rater, pair FROM judgements").fetchall()
    assert len(rows) == len(set(rows)) == n_raters * 11
    for r in raters:
        assert {p for q, p in rows if q == r} == set(rater_plan(manifest, index[r]))


# ---------------------------------------------------------------- a real browser

def _browser():
    """Headless Chromium from the distribution's packages, through Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("the browser test needs chromium and chromedriver on PATH "
                    "(Debian: apt-get install chromium chromium-driver; 'make test' does it as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=390,844",
                "--hide-scrollbars"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_window_size(390, 844)  # a phone held upright (--window-size alone may give a wider minimum)
    return browser


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_browser_completes_a_study_and_the_report_counts_it(tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    study = create(tmp_path, "--exposure", "0.2", "--sanity", "2", "--practice", "1", n=4, methods=("gray",))
    pairs = pairs_of(study)
    shots = os.environ.get("COLORBENCH_SCREENSHOTS")  # a folder: keep screenshots for the README
    browser = _browser()
    try:
        with serving(study) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 15, poll_frequency=0.02)
            wait.until(lambda b: b.find_element(By.ID, "consent").is_displayed())
            start = browser.find_element(By.ID, "start")
            assert not start.is_enabled()  # consent first
            _shot(browser, shots, "phone_intro")
            browser.find_element(By.ID, "consent").click()
            start.click()
            total, called_real, keys = 7, 0, ["f", "j", "\ue012", "\ue014"]  # F, J, arrow left, arrow right
            for n in range(total):
                if n == 3:  # leave and come back: the page offers to continue where the rater was
                    browser.get(url)
                    wait.until(lambda b: b.find_element(By.ID, "continue").is_displayed())
                    assert browser.find_element(By.ID, "wb-done").text == "3"
                    browser.find_element(By.ID, "continue").click()
                wait.until(lambda b: "showing" in b.find_element(By.CSS_SELECTOR, ".stage").get_attribute("class"))
                if n == 1:
                    _shot(browser, shots, "phone_pair")
                # the images hide by themselves after the exposure; only then can the rater answer
                wait.until(lambda b: b.find_element(By.ID, "choose-left").is_enabled())
                assert "masked" in browser.find_element(By.CSS_SELECTOR, ".stage").get_attribute("class")
                pid = re.search(r"/img/(p\d+)/left", browser.find_element(By.CSS_SELECTOR, "#slot-left img")
                                .get_attribute("src")).group(1)
                pair = pairs[pid]
                # sanity and practice: spot the fake; test pairs: call the real photo fake on every other one
                side = pair["fake"] if pair["kind"] != "test" or n % 2 else {"left": "right", "right": "left"}[pair["fake"]]
                called_real += pair["kind"] == "test" and side != pair["fake"]
                if n % 3 == 0:  # click the photo itself
                    browser.find_element(By.ID, f"slot-{side}").click()
                elif n % 3 == 1:  # the buttons under the photos
                    browser.find_element(By.ID, f"choose-{side}").click()
                else:  # keyboard shortcuts
                    browser.find_element(By.TAG_NAME, "body").send_keys(keys[(n // 3) % 2 * 2 + (side == "right")])
                wait.until(lambda b, n=n: b.find_element(By.CSS_SELECTOR, "#progress .label").text == f"{n + 1} / {total}")
            wait.until(lambda b: b.find_element(By.ID, "done").is_displayed())
            assert re.fullmatch(r"[0-9A-F]{8}", browser.find_element(By.ID, "code").text)
            # phone-sized: nothing wider than the screen
            assert browser.execute_script("return window.innerWidth") <= 400
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            _shot(browser, shots, "phone_done")
            if shots:  # desktop-sized screenshots, from a second rater
                browser.set_window_size(1280, 900)
                browser.execute_script("localStorage.clear()")
                browser.get(url)
                wait.until(lambda b: b.find_element(By.ID, "consent").is_displayed())
                _shot(browser, shots, "desktop_intro")
                browser.find_element(By.ID, "consent").click()
                browser.find_element(By.ID, "start").click()
                wait.until(lambda b: "showing" in b.find_element(By.CSS_SELECTOR, ".stage").get_attribute("class"))
                _shot(browser, shots, "desktop_pair")
    finally:
        browser.quit()
    assert cli(["study", "report", str(study), "--out", str(tmp_path / "run")]) == 0
    assert "included 1;" in capsys.readouterr().out
    records = json.loads((tmp_path / "run" / "metrics.json").read_text())["records"]
    got = {r["metric"]: r["value"] for r in records if r["method"] == "gray"}
    assert got["judgements"] == 4 and got["labelled_real"] == pytest.approx(100 * called_real / 4)
    with sqlite3.connect(study / "answers.sqlite") as db:
        shown = [r[0] for r in db.execute("SELECT shown_ms FROM judgements")]
    assert all(180 <= s <= 2000 for s in shown), shown  # the 0.2 s exposure, measured in the browser


def _shot(browser, folder, name):
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"study_{name}.png"))
