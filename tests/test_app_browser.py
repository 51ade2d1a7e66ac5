"""``e2v app`` in a real browser: the system's headless Chromium (Debian's ``chromium``, installed by .ci/run) driven
by Playwright, against ``e2v app`` started as a command on a free port with a tiny checkpoint. Marked ``browser``
(not in the default run; .ci/run runs them). ``E2V_APP_SCREENSHOT=PATH`` saves the page after a job there (how
docs/app.png was made)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from e2v.datamodules.video_io import probe_video, save_image
from test_pipeline import save_checkpoint, tiny_pipeline

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FRAMES = 13  # the video's length (the sampled clip adds the a2 layout's 9 reference frames)
TIMEOUT_MS = 300_000  # a loaded 2-core machine (nice 19 under 20 busy processes) is that slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def references(root: Path) -> dict[str, Path]:
    from skimage import data

    images = {"astronaut": data.astronaut()[:300, 100:400:2], "cat": data.chelsea()[::4, ::4],
              "cafe": data.coffee()[::4, ::4]}
    for name, image in images.items():
        save_image(root / f"{name}.png", np.ascontiguousarray(image))
    (root / "notes.png").write_bytes(b"this is not an image")
    return {name: root / f"{name}.png" for name in (*images, "notes")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``e2v app`` on a free port (cwd and HOME empty folders, to check nothing is written outside --out)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip("no system chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    root = tmp_path_factory.mktemp("app_browser")
    save_checkpoint(tiny_pipeline(), root / "tiny.ckpt")
    for name in ("cwd", "home", "out", "refs"):
        (root / name).mkdir()
    refs = references(root / "refs")
    port = free_port()
    env = {**os.environ, "HOME": str(root / "home"), "PYTHONPATH": str(REPO)}
    log = open(root / "server.log", "w")
    command = [sys.executable, "-m", "e2v.cli", "app", "--checkpoint", str(root / "tiny.ckpt"), "--port", str(port),
               "--out", str(root / "out"), "--height", "32", "--width", "32", "--frames", str(FRAMES), "--steps", "2",
               "--guidance", "1", "--fps", "8"]
    process = subprocess.Popen(command, cwd=root / "cwd", env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 900
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"e2v app did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(1)
    yield {"url": url, "root": root, "refs": refs}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server["url"])
    page.wait_for_selector("#ref0-file")
    yield page
    page.close()


def upload(page, slot: int, path: Path) -> None:
    if not page.is_visible(f"#ref{slot}-file"):
        page.click("#add-ref")
    page.set_input_files(f"#ref{slot}-file input[type=file]", str(path))


def choose_kind(page, slot: int, kind: str) -> None:
    page.click(f"#ref{slot}-kind input")
    page.click(f"ul[role=listbox] li:has-text('{kind}')")


def wait_for_video(page, previous: str = "") -> str:
    """The result video's URL once the browser has loaded its metadata with a duration > 0."""
    page.wait_for_function(
        "prev => { const v = document.querySelector('#result-video video');"
        " return v && v.src !== prev && v.readyState >= 1 && v.duration > 0; }", arg=previous)
    return page.eval_on_selector("#result-video video", "v => v.src")


def fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as response:
        path.write_bytes(response.read())
    return path


def test_generate_two_references_and_a_background(server, page, tmp_path):
    refs = server["refs"]
    upload(page, 0, refs["astronaut"])
    upload(page, 1, refs["cat"])
    upload(page, 2, refs["cafe"])
    choose_kind(page, 0, "human")
    choose_kind(page, 1, "animal")
    choose_kind(page, 2, "background")
    for slot in range(3):  # what the model will see, shown before generating
        page.wait_for_selector(f"#ref{slot}-prepared img")
    page.fill("#prompt textarea", "an astronaut pets a cat in a cafe")
    page.click("#generate")
    url = wait_for_video(page)
    assert probe_video(fetch(url, tmp_path / "result.mp4"))["frames"] == FRAMES  # the requested output length
    command = page.inner_text("#result-command")
    assert "e2v generate" in command and ":background" in command and ":animal" in command
    page.wait_for_selector("#gallery img")
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    target = os.environ.get("E2V_APP_SCREENSHOT")
    if target:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=target, full_page=False)


def test_bad_upload_shows_its_message_and_the_next_job_succeeds(server, page, tmp_path):
    upload(page, 0, server["refs"]["notes"])
    page.get_by_text("cannot decode image").first.wait_for()
    page.fill("#prompt textarea", "a cat")
    page.click("#generate")
    page.get_by_text("--ref: notes.png: cannot decode image").first.wait_for()
    page.goto(server["url"])  # the server kept serving: a fresh form, a good upload
    page.wait_for_selector("#ref0-file")
    upload(page, 0, server["refs"]["cat"])
    page.fill("#prompt textarea", "a cat")
    page.fill("#frames input", "5")
    page.click("#generate")
    url = wait_for_video(page)
    assert probe_video(fetch(url, tmp_path / "second.mp4"))["frames"] == 5


def test_progress_then_cancel_then_a_job_succeeds(server, page):
    upload(page, 0, server["refs"]["cat"])
    page.fill("#prompt textarea", "a cat")
    page.fill("#frames input", "5")
    page.fill("#steps input", "400")
    page.click("#generate")
    page.get_by_text("denoising step").first.wait_for()
    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('cancelled')")
    page.fill("#steps input", "2")
    page.click("#generate")
    wait_for_video(page)


def test_nothing_written_outside_the_output_folder(server):
    root = server["root"]
    assert list((root / "cwd").iterdir()) == [] and list((root / "home").iterdir()) == []
    assert "listening on" not in (root / "server.log").read_text()  # 127.0.0.1: no warning
