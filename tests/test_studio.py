"""The studio (studio/), driven as people use it: a real headless Chromium on the page that
`python -m studio` serves over the real Cog servers it starts on the toy SDXL, and the studio
over a pair of servers given by URL. Screenshots of each stage go to test-artifacts/studio/
(STUDIO_SCREENSHOTS=docs/studio refreshes the committed set)."""

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from formats.bundle import TRAINING_CONFIG_FILE
from studio.__main__ import main as studio_main
from studio.actions import Studio
from studio.cog_api import CogServer
from studio.servers import server_environment
from studio.web import StudioServer
from tests.cog_server import running_server

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "emblem_photos.zip"
SCREENSHOTS = ROOT / (os.environ.get("STUDIO_SCREENSHOTS") or "test-artifacts/studio")
EDITED = "a TOK emblem, caption edited in the studio"
SHORT_TRAINING = {"max_train_steps": "4", "sample_every": "2"}
# Startup: two Cog servers' setups on shared cores; each step below takes seconds.
READY_SECONDS = 300
STEP_SECONDS = 120


def wait(driver, condition, timeout=STEP_SECONDS):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition())


def images(driver, selector: str) -> list[dict]:
    """Each image's decoding as the browser sees it: loaded, its size, and how many distinct
    grey levels a 16 px copy of it has (1: a blank picture)."""
    return driver.execute_script(
        """return [...document.querySelectorAll(arguments[0])].map((image) => {
             const row = {complete: image.complete, width: image.naturalWidth, levels: 0};
             if (!row.complete || !row.width) return row;
             const canvas = document.createElement('canvas');
             canvas.width = canvas.height = 16;
             const context = canvas.getContext('2d');
             context.drawImage(image, 0, 0, 16, 16);
             const pixels = context.getImageData(0, 0, 16, 16).data;
             const levels = new Set();
             for (let i = 0; i < pixels.length; i += 4) {
               levels.add(pixels[i] + pixels[i + 1] + pixels[i + 2]);
             }
             row.levels = levels.size;
             return row;
           });""",
        selector,
    )


def shown_pictures(driver, selector: str) -> int:
    """How many images under `selector` the browser decoded into non-blank pictures."""
    return sum(1 for row in images(driver, selector) if row["width"] > 0 and row["levels"] > 1)


def text(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def fill(driver, form: str, values: dict) -> None:
    for name, value in values.items():
        field = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        field.clear()
        if value:
            field.send_keys(value)


def screenshot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def caption_in_record(tarball: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    return [row["caption"] for row in record["captions"]]


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, model_cache):
    """`python -m studio` as `make studio` runs it, on a free port, with its own servers."""
    folder = tmp_path_factory.mktemp("studio")
    log = folder / "studio.log"
    env = {**os.environ, "SDXL_TUNER_CACHE": str(model_cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "studio", "--port", "0", "--data", str(folder / "data")]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--models", "embedded"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not (found := re.search(r"Studio: (http://\S+)/", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield found.group(1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1400")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


@pytest.mark.timeout(600)
def test_studio_in_a_browser_from_photos_to_inpainting(studio_url, browser, tmp_path):
    started = time.monotonic()
    browser.get(studio_url + "/")
    ready = "predict: READY · train: READY"
    wait(browser, lambda: text(browser, "#server-status") == ready, READY_SECONDS)
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#train-more label"))
    upload = browser.find_element(By.ID, "photo-files")

    # A bad zip: the train server's message, in the photos section.
    bad = tmp_path / "not-a.zip"
    bad.write_bytes(b"these are not photos")
    upload.send_keys(str(bad))
    wait(browser, lambda: "not a zip or tar archive" in text(browser, "#photos .error"))
    screenshot(browser, "01-bad-zip")

    # The families the container trains, each picked as the base model it names.
    family = Select(browser.find_element(By.ID, "family-choice"))
    assert [o.text for o in family.options] == ["the deployment's", "SDXL", "SD 1.5"]
    family.select_by_visible_text("SD 1.5")
    base_model = browser.find_element(By.CSS_SELECTOR, "#train-form [name=base_model]")
    assert base_model.get_attribute("value") == "tiny-sd15"
    family.select_by_visible_text("the deployment's")  # the toy SDXL trains below
    assert base_model.get_attribute("value") == ""

    # The photos as they will train: 8 crops and masks, captions from caption.csv.
    fill(browser, "#train-form", SHORT_TRAINING)
    upload.send_keys(str(PHOTOS))
    wait(browser, lambda: shown_pictures(browser, "#crops img.crop") == 8)
    # A mask may be one grey level (the whole photo matters): decoded is what counts.
    assert [row["width"] > 0 for row in images(browser, "#crops img.mask")] == [True] * 8
    assert not browser.find_element(By.CSS_SELECTOR, "#photos .error").is_displayed()
    assert "8 photos, 4 steps" in text(browser, "#estimate")
    caption = browser.find_element(By.CSS_SELECTOR, "#crops textarea")
    assert "TOK" in caption.get_attribute("value")
    caption.clear()
    caption.send_keys(EDITED)
    screenshot(browser, "02-photos")

    # A short training: progress, samples as they come, then the model in Models.
    browser.find_element(By.ID, "train-start").click()
    wait(browser, lambda: shown_pictures(browser, "#run-samples img") >= 1)
    wait(browser, lambda: "finished" in text(browser, "#run-status"))
    assert not browser.find_element(By.CSS_SELECTOR, "#photos .error").is_displayed()
    assert browser.find_element(By.ID, "run-progress").get_attribute("value") == "4"
    screenshot(browser, "03-training")
    browser.find_element(By.CSS_SELECTOR, "nav [data-tab=models]").click()
    wait(browser, lambda: shown_pictures(browser, "#model-list img.loss") == 1)
    assert text(browser, "#model-list h3") == "my-model"
    assert shown_pictures(browser, "#model-list img.sample") == 2  # steps 2 and 4
    link = browser.find_element(By.LINK_TEXT, "Download").get_attribute("href")
    assert EDITED in caption_in_record(requests.get(link, timeout=60).content)
    screenshot(browser, "04-models")

    # Base vs fine-tune at one seed, from the model's card.
    browser.find_element(By.XPATH, "//button[text()='Generate with it']").click()
    assert "trigger: TOK" in text(browser, "#trigger-hint")
    fill(browser, "#generate-form", {"prompt": "a photo of TOK", "num_outputs": "99"})
    browser.find_element(By.CSS_SELECTOR, "[name=compare][value=base]").click()
    browser.find_element(By.ID, "generate-start").click()
    # A refused input: the predict server's 422 detail where the person is looking.
    wait(browser, lambda: "greater than the maximum of 4" in text(browser, "#generate .error"))
    assert "num_outputs" in text(browser, "#generate .error")
    fill(browser, "#generate-form", {"num_outputs": ""})
    browser.find_element(By.ID, "generate-start").click()
    wait(browser, lambda: shown_pictures(browser, "#results img") == 2)
    labels = [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")]
    assert labels == ["base", "my-model"]
    screenshot(browser, "05-base-vs-fine-tune")
    browser.find_element(By.CSS_SELECTOR, "[name=compare][value=scales]").click()
    browser.find_element(By.ID, "generate-start").click()
    wait(browser, lambda: shown_pictures(browser, "#results img") == 3)
    labels = [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")]
    assert labels == ["scale 0", "scale 0.5", "scale 1"]

    # The request behind an image, then inpainting it with a drawn mask and a stacked LoRA.
    browser.find_elements(By.CSS_SELECTOR, "#results img")[1].click()
    wait(browser, lambda: text(browser, "#request-json"))
    request = json.loads(text(browser, "#request-json"))["input"]
    assert request["replicate_weights"].endswith("/files/models/my-model.tar")
    assert text(browser, "#request-curl").startswith("curl -s -X POST http://127.0.0.1:")
    screenshot(browser, "06-request")
    browser.find_element(By.ID, "use-image").click()
    canvas = browser.find_element(By.ID, "mask-canvas")
    wait(browser, lambda: canvas.is_displayed())
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(
        40, 20
    ).release().perform()
    browser.find_element(By.CSS_SELECTOR, "[name=compare][value=none]").click()
    Select(browser.find_element(By.ID, "extra-choice")).select_by_value("my-model")
    fill(browser, "#generate-form", {"extra_lora_scale": "0.5", "prompt_strength": "0.9"})
    browser.find_element(By.ID, "generate-start").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 1)
    wait(browser, lambda: shown_pictures(browser, "#results img") == 1)
    browser.find_element(By.CSS_SELECTOR, "#results img").click()
    wait(browser, lambda: text(browser, "#request-json"))
    request = json.loads(text(browser, "#request-json"))["input"]
    assert {"image", "mask", "extra_lora"} <= request.keys() and request["extra_lora_scale"] == 0.5
    mask = Image.open(io.BytesIO(requests.get(request["mask"], timeout=30).content))
    assert mask.convert("L").getextrema() == (0, 255)  # the stroke on black
    browser.find_element(By.ID, "request-close").click()
    screenshot(browser, "07-inpaint-with-extra-lora")

    # A long training cancelled: it ends as cancelled and leaves no model.
    browser.find_element(By.CSS_SELECTOR, "nav [data-tab=photos]").click()
    fill(browser, "#train-form", {"max_train_steps": "5000", "name": "cancelled"})
    browser.find_element(By.ID, "train-start").click()
    wait(browser, lambda: re.search(r"step [1-9]\d* / 5000", text(browser, "#run-status")))
    browser.find_element(By.ID, "train-cancel").click()
    wait(browser, lambda: "was cancelled" in text(browser, "#run-status"))
    screenshot(browser, "08-cancelled")
    browser.find_element(By.CSS_SELECTOR, "nav [data-tab=gallery]").click()
    wait(browser, lambda: shown_pictures(browser, "#gallery-grid img") == 6)
    screenshot(browser, "09-gallery")
    browser.find_element(By.CSS_SELECTOR, "nav [data-tab=models]").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#model-list h3")) == 1)
    print(f"browser steps took {time.monotonic() - started:.0f}s")


@pytest.fixture(scope="module")
def servers_by_url(tmp_path_factory, model_cache):
    """A predict and a train server already running, started as `make serve` and
    `make serve-train` start them, on the embedded toy SDXL. One after the other: each writes
    the served schema as it starts."""
    logs = tmp_path_factory.mktemp("servers")
    env = {**os.environ, **server_environment(True), "SDXL_TUNER_CACHE": str(model_cache)}
    with running_server(logs / "predict.log", env=env) as predict:
        with running_server(logs / "train.log", mode="train", env=env) as train:
            yield predict, train


def test_studio_over_servers_given_by_url_trains_the_edited_captions(servers_by_url, tmp_path):
    predict, train = servers_by_url
    server = StudioServer(("127.0.0.1", 0), token=None)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cog = CogServer(predict, "predict"), CogServer(train, "train")
    server.studio = Studio(*cog, tmp_path, url, price_per_gpu_hour=2.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bad = requests.post(
            f"{url}/api/photos", data=b"not a zip", headers={"X-File-Name": "x.zip"}
        )
        assert bad.status_code == 400
        assert "x.zip is not a zip or tar archive" in bad.json()["error"]
        assert not (tmp_path / "photos").exists() or not any((tmp_path / "photos").iterdir())

        # Loose photos are zipped by the studio; too few of them are warned about.
        with zipfile.ZipFile(PHOTOS) as archive:
            loose = [
                {
                    "name": n,
                    "data": "data:image/png;base64," + base64.b64encode(archive.read(n)).decode(),
                }
                for n in archive.namelist()[:3]
            ]
        review = requests.post(f"{url}/api/photos", json={"files": loose}).json()
        assert len(review["images"]) == 3
        assert review["warnings"][0].startswith("Only 3 photo(s)")

        # A tar is reviewed as a zip is.
        buffer = io.BytesIO()
        with zipfile.ZipFile(PHOTOS) as archive, tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in archive.namelist()[:5]:
                info = tarfile.TarInfo(name)
                info.size = len(archive.read(name))
                tar.addfile(info, io.BytesIO(archive.read(name)))
        tar_headers = {"X-File-Name": "photos.tar"}
        review = requests.post(f"{url}/api/photos", data=buffer.getvalue(), headers=tar_headers)
        assert len(review.json()["images"]) == 5

        settings = json.dumps({"max_train_steps": 2})
        headers = {"X-File-Name": PHOTOS.name, "X-Training-Settings": settings}
        review = requests.post(f"{url}/api/photos", data=PHOTOS.read_bytes(), headers=headers)
        review = review.json()
        seconds = review["estimated_training_seconds"] + review["model_load_and_caching_seconds"]
        assert review["estimate"] == {"seconds": seconds, "price": seconds / 3600 * 2.0}
        assert [image["source"] for image in review["images"]][:2] == [
            "emblem_00.png",
            "emblem_01.png",
        ]
        captions = {image["source"]: image["caption"] for image in review["images"]}
        captions["emblem_01.png"] = EDITED
        form = {"photos": review["photos"], "captions": captions, "inputs": {"max_train_steps": 2}}
        run = requests.post(f"{url}/api/trainings", json=form).json()
        deadline = time.monotonic() + STEP_SECONDS
        while run["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
            run = requests.get(f"{url}/api/trainings/{run['id']}").json()
        assert run["status"] == "succeeded" and run["step"] == run["total"] == 2
        record = caption_in_record(requests.get(f"{url}/files/models/{run['model']}.tar").content)
        assert sorted(record) == sorted(captions.values())  # every caption as edited

        form = {"inputs": {"prompt": "a photo of TOK", "seed": 1}, "model": run["model"]}
        entries = requests.post(f"{url}/api/generate", json={**form, "compare": "base"}).json()
        assert [entry["label"] for entry in entries] == ["base", run["model"]]
        assert [entry["request"]["seed"] for entry in entries] == [1, 1]

        # A tarball loaded by URL (here the studio's own, as a stranger's would be), then
        # deleted: generating with it works, and afterwards it is gone.
        tarball_url = f"{url}/files/models/{run['model']}.tar"
        loaded = requests.post(f"{url}/api/models", json={"url": tarball_url, "name": "theirs"})
        form = {**form, "model": loaded.json()["name"]}
        entries = requests.post(f"{url}/api/generate", json=form).json()
        assert entries[0]["request"]["replicate_weights"] == tarball_url
        assert requests.delete(f"{url}/api/models/theirs", json={}).status_code == 200
        assert requests.delete(f"{url}/api/models/{run['model']}", json={}).status_code == 200
        assert requests.get(f"{url}/api/models").json() == []
        assert requests.get(tarball_url).status_code == 404
        refused = requests.post(f"{url}/api/generate", json=form)
        assert refused.status_code == 404 and "no model 'theirs'" in refused.json()["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_studio_off_127_0_0_1_needs_the_operators_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SDXL_TUNER_STUDIO_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="SDXL_TUNER_STUDIO_TOKEN"):
        studio_main(["--host", "0.0.0.0", "--data", str(tmp_path)])

    server = StudioServer(("127.0.0.1", 0), token="s3cret")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    nowhere = "http://127.0.0.1:9"  # no server: the status says so, it is not needed here
    cog = CogServer(nowhere, "predict"), CogServer(nowhere, "train")
    server.studio = Studio(*cog, tmp_path, url, token="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refused = requests.get(f"{url}/api/models")
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert requests.get(f"{url}/", params={"token": "wrong"}).status_code == 401
        with requests.Session() as visitor:  # the address with ?token=, then the cookie
            assert visitor.get(f"{url}/", params={"token": "s3cret"}).status_code == 200
            assert visitor.get(f"{url}/api/models").json() == []
            assert visitor.get(f"{url}/api/status").json()["train"]["status"] == "UNREACHABLE"
            # A server that does not answer: the message names it and what to do.
            down = visitor.post(f"{url}/api/generate", json={"inputs": {"prompt": "a TOK"}})
            assert down.status_code == 400
            assert down.json()["error"].startswith(f"The predict server at {nowhere} does not")
        # The servers reach the studio's files and webhooks with the token in the address.
        assert server.studio.url("files/models/m.tar").endswith("/files/models/m.tar?token=s3cret")
    finally:
        server.shutdown()
        server.server_close()
