"""The members' web page for every task, in Debian's headless Chromium, against one real uvicorn server.

One module fixture trains every registered task's tiny champion with test_contract's stage functions (one epoch)
and serves them all from one real ``mlops serve`` process. Per task, a browser signs in with an API key, chooses the
task, presses "use the example input" (the task's ``example_upload``, served from the champion's own raw data) and
must show the answer the way the task declares (``Task.display``): the rating and its probabilities with a heat map,
the failure type, the leak source drawn on the frame, the anomaly-score timeline, the class masks with instance
statistics. The rendered values are compared with the API's own answer to the same file. Then a file the task's
service refuses must show the API's message and no trace of the previous answer.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``test.sh`` where missing), driven by Playwright without
any browser download. Without it the tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops.tasks import get_task, task_names
from tests.conftest import issue_key, start_service, stop_process, write_params
from tests.test_contract import contract_params, prepare_champions, served_env

# Each test may be the one that builds the module fixture (five tiny trainings and a server start), so each gets its
# time; a browser step that hangs still fails within it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TASKS = task_names()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: what each display kind must render (the page's element ids)
KIND_ELEMENTS = {
    "rating": ["#probs", "#heatmap-fig"],
    "class": ["#probs", "#heatmap-fig"],
    "position": ["#position-table", "#heatmap-fig"],
    "timeline": ["#timeline-box"],
    "masks": ["#masks-box"],
}


def chromium() -> str:
    """Debian's chromium, or skip (fail in CI: there it must run)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = "Debian's chromium is needed for the web page tests: apt-get install -y chromium (test.sh does)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so these tests may not skip")
    pytest.skip(message)


def web_params() -> dict:
    """test_contract's params (tiny data, gates any model passes) with one epoch: only the page matters here."""
    params = contract_params()
    for name in TASKS:
        params[name]["train"].update(epochs=1, patience=1)
    return params


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every task's champion served by one real `mlops serve` process, and a member's key."""

    from mlops.params import load_params

    chromium()  # no training when the browser is missing
    root = tmp_path_factory.mktemp("web")
    write_params(root, web_params())
    params = load_params(root / "params.yaml")
    home, champions = prepare_champions(root, params, TASKS)
    raws = {name: champion["raw"] for name, champion in champions.items()}
    env = served_env(home)
    key = issue_key(env, "web member")
    proc, base = start_service(root, env, log=home / "serve-web.log")
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as http:
            yield {"base": base, "key": key, "raws": raws, "http": http, "root": root}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(served, browser):
    """A signed-in page; fails the test on any script error the page raised."""
    p = browser.new_page()
    p.set_default_timeout(90_000)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(served["base"] + "/")
    p.fill("#key", served["key"])
    p.click("#signin-button")
    p.wait_for_selector("#analyse:not(.hidden)")
    assert "Signed in as web member (member)" in p.inner_text("#whoami")
    yield p
    p.close()
    assert not errors, f"the page raised: {errors}"


def choose(p, name: str) -> None:
    p.select_option("#task", name)
    p.wait_for_selector(f'#analyse[data-task="{name}"]')


def api_answer(served, name: str) -> dict[str, Any]:
    example = get_task(name).example_upload(served["raws"][name])
    resp = served["http"].post(
        f"/v1/models/{name}/predict", files={"file": (example.filename, example.data, example.content_type)}
    )
    assert resp.status_code == 200, resp.text[:2000]
    return resp.json()


def visible(p, selector: str) -> bool:
    return p.locator(selector).first.is_visible()


def rendered_width(p, selector: str) -> float:
    return p.evaluate(f"document.querySelector('{selector}').getBoundingClientRect().width")


def image_loaded(p, selector: str) -> bool:
    """Waits until the image at ``selector`` has decoded (a data: URL loads asynchronously); fails if it never does."""
    p.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=30_000,
    )
    return True


# --- the declarations, over HTTP -------------------------------------------------------------------------------------


def test_every_task_declares_its_page_and_serves_its_example(served):
    http = served["http"]
    for name in TASKS:
        task = get_task(name)
        declared = http.get(f"/v1/tasks/{name}/page").json()
        assert task.display is not None, f"{name} declares no display"
        assert declared["kind"] == task.display.kind and declared["served"] is True
        # every file type the task declares is one its served model accepts (none was left out of the picker)
        assert declared["files"] == task.display.files, (declared["files"], declared["content_types"])
        assert declared["accept"] == ",".join(declared["files"])
        assert declared["example"] == f"/v1/models/{name}/example"
        example = task.example_upload(served["raws"][name])
        resp = http.get(declared["example"])
        assert resp.status_code == 200, resp.text[:500]
        assert resp.content == example.data
        assert resp.headers["content-type"].split(";")[0] == example.content_type
        assert resp.headers["x-example-filename"] == example.filename
        suffix = Path(example.filename).suffix.lower()
        assert declared["files"].get(suffix) == example.content_type, f"{name}: the picker must offer its example"
    assert httpx.get(f"{served['base']}/v1/models/{TASKS[0]}/example", timeout=30).status_code == 401
    unknown = http.get("/v1/tasks/fume_hod/page")
    assert unknown.status_code == 404 and "'fume_hod'" in unknown.json()["detail"]
    assert http.get("/v1/models/fume_hod/example").status_code == 404


# --- the page in Chromium --------------------------------------------------------------------------------------------


def check_rating(p, out: dict, name: str) -> None:
    assert p.inner_text("#answer") == str(out["rating"])
    assert p.locator("#probs tr").count() == len(out["probabilities"])
    labels = get_task(name).display.labels
    for level, word in labels.items():
        assert f"{level} ({word})" in p.inner_text("#probs")


def check_class(p, out: dict, name: str) -> None:
    assert p.inner_text("#answer") == out["class"]
    assert p.locator("#probs tr").count() == len(out["probabilities"])
    assert float(p.inner_text("#confidence")) == pytest.approx(out["confidence"], abs=0.006)


def check_position(p, out: dict, name: str) -> None:
    x, y = (float(v) for v in p.get_attribute("#answer", "data-value").split(","))
    assert (x, y) == pytest.approx((out["x"], out["y"]))
    assert "x = " in p.inner_text("#answer") and "z = " in p.inner_text("#answer-detail")
    assert p.locator("#position-table tr").count() >= 3
    # the source drawn on the frame: the ring's centre in the frame's pixels (the .npy's width and height)
    view = p.get_attribute("#marker", "viewBox").split()
    width, height = float(view[2]), float(view[3])
    cx, cy = float(p.get_attribute("#marker-circle", "cx")), float(p.get_attribute("#marker-circle", "cy"))
    assert cx == pytest.approx(min(max(out["x"] + 0.5, 0), width))
    assert cy == pytest.approx(min(max(out["y"] + 0.5, 0), height))
    assert visible(p, "#marker-circle")


def check_timeline(p, out: dict, name: str) -> None:
    text = p.inner_text("#answer")
    if out["threshold"] is None:
        assert f"{out['n_windows']} windows scored" in text
    else:
        assert text == f"{out['n_flagged']} of {out['n_windows']} windows flagged"
        assert "threshold" in p.inner_text("#answer-detail")
        assert p.inner_text("#spans")
    assert image_loaded(p, "#timeline") and rendered_width(p, "#timeline") >= 300
    assert not visible(p, "#heatmap-fig")


def check_masks(p, out: dict, name: str) -> None:
    kind, stats = next(iter(out["instances"].items()))
    count = stats["count"]
    assert p.inner_text("#answer").startswith(f"{count} {kind} instance")
    assert f"count {count}" in p.inner_text("#instances")
    assert p.locator("#mask-stats tbody tr").count() == len(out["classes"])
    for cls in out["classes"]:
        assert cls in p.inner_text("#mask-stats") and cls in p.inner_text("#mask-legend")
    assert image_loaded(p, "#overlay") and rendered_width(p, "#overlay") >= 300
    assert p.locator("#mask-images img").count() == len(out["classes"])
    assert all(image_loaded(p, f"#mask-images figure:nth-child({i + 1}) img") for i in range(len(out["classes"])))
    assert not visible(p, "#heatmap-fig")


CHECKS = {
    "rating": check_rating,
    "class": check_class,
    "position": check_position,
    "timeline": check_timeline,
    "masks": check_masks,
}


@pytest.mark.parametrize("name", TASKS)
def test_page_shows_the_example_answer_then_a_refusal(served, page, name, tmp_path):
    p, display = page, get_task(name).display
    choose(p, name)
    declared = served["http"].get(f"/v1/tasks/{name}/page").json()
    assert p.get_attribute("#file", "accept") == declared["accept"]
    assert display.upload in p.inner_text("#upload-hint")
    assert visible(p, "#example-button")

    p.click("#example-button")
    p.wait_for_selector("#result:not(.hidden)")
    assert not visible(p, "#spinner") and not visible(p, "#error")
    assert p.inner_text("#answer-title") == display.title
    out = api_answer(served, name)
    assert p.inner_text("#version") == out["version"]
    for selector in KIND_ELEMENTS[display.kind]:
        assert visible(p, selector), f"{name}: {selector} is not shown"
    if out.get("heatmap_png"):
        # the heat map at whatever resolution it comes, scaled up by the page, with its colour bar 0..1
        assert image_loaded(p, "#heatmap") and rendered_width(p, "#heatmap") >= 300
        assert visible(p, "#heatmap-legend .colorbar") and p.inner_text("#heatmap-legend").split() == ["0", "1"]
    CHECKS[display.kind](p, out, name)

    # A file the service refuses: the API's own message, and nothing left of the answer before it.
    suffix = next(iter(declared["files"]))
    bad = tmp_path / f"notes{suffix}"
    bad.write_bytes(b"these are notes, not a file this model reads")
    expected = served["http"].post(
        f"/v1/models/{name}/predict", files={"file": (bad.name, bad.read_bytes(), declared["files"][suffix])}
    )
    assert 400 <= expected.status_code < 500
    p.set_input_files("#file", str(bad))
    p.click("#analyse-button")
    p.wait_for_selector("#error:not(.hidden)")
    error = p.inner_text("#error")
    assert error.startswith(str(expected.status_code)) and expected.json()["detail"] in error
    assert not visible(p, "#result") and p.get_attribute("#heatmap", "src") is None
    assert not visible(p, "#spinner")


def test_choosing_another_task_clears_the_answer_and_its_heat_map(served, page):
    with_heat = [n for n in TASKS if get_task(n).display.kind in ("rating", "class", "position")]
    without = [n for n in TASKS if get_task(n).display.kind in ("timeline", "masks")]
    p = page
    choose(p, with_heat[0])
    p.click("#example-button")
    p.wait_for_selector("#heatmap-fig:not(.hidden)")
    assert image_loaded(p, "#heatmap")
    choose(p, without[0])
    assert not visible(p, "#result") and p.get_attribute("#heatmap", "src") is None
    assert p.evaluate("document.getElementById('file').files.length") == 0
    p.click("#example-button")
    p.wait_for_selector("#result:not(.hidden)")
    assert not visible(p, "#heatmap-fig") and p.get_attribute("#heatmap", "src") is None
    assert p.locator("#probs tr").count() == 0


def test_page_without_a_file_or_with_a_wrong_key_says_what_to_do(served, browser):
    p = browser.new_page()
    try:
        p.goto(served["base"] + "/")
        p.fill("#key", "mlk_000000000000_wrong")
        p.click("#signin-button")
        p.wait_for_selector("#whoami.error")
        assert p.inner_text("#whoami").startswith("401") and "unknown API key" in p.inner_text("#whoami")
        p.fill("#key", served["key"])
        p.click("#signin-button")
        p.wait_for_selector("#analyse[data-task]")
        p.click("#analyse-button")
        p.wait_for_selector("#error:not(.hidden)")
        assert "Choose a file first" in p.inner_text("#error")
    finally:
        p.close()
