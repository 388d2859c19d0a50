"""The page at ``/`` in a real Chromium (Debian's, under Selenium), against the live
Serve apps: the demo model for real speech, the guarded app for the key, the limits
and CORS. Each test drives the page as a person would and compares what it shows or
saves with what the API returns for the same audio.

Screenshots go to a temp folder; ``REVERB_UPDATE_SCREENSHOTS=1`` writes them to
docs/screenshots/ (the ones README shows).
"""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from browser import chromium, contrast_ratio, wait_for_download, wait_until
from serve_helpers import (
    API_KEY,
    CLIENT_ID_HEADER,
    DEMO_DATA,
    GUARDED_UPLOAD_LIMIT,
    manifest_text,
    stalled_upload,
)

from serve_app.engine.audio import decode_audio

REPO_ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTIONS = "/v1/audio/transcriptions"
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
MICROPHONE_CLIP = "heldout_00.opus"
MICROPHONE_LEAD_S, MICROPHONE_TAIL_S = 0.5, 2.0


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory) -> Path:
    """A held-out clip as the fake microphone plays it: 16-bit wav, with silence
    around it so that a take stopped after the speech holds it exactly once."""
    samples = decode_audio((DEMO_DATA / MICROPHONE_CLIP).read_bytes())
    lead, tail = (
        np.zeros(int(16000 * s), np.float32) for s in (MICROPHONE_LEAD_S, MICROPHONE_TAIL_S)
    )
    pcm = (np.clip(np.concatenate([lead, samples, tail]), -1, 1) * 32767).astype("<i2")
    path = tmp_path_factory.mktemp("microphone") / "clip.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(serve_cluster, microphone_wav, downloads):
    with chromium(microphone_wav, downloads) as d:
        yield d


@pytest.fixture
def page(driver):
    """A fresh tab state: storage cleared, desktop width."""

    def open_page(url: str, *, key: str | None = None, server: str | None = None) -> Any:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.get(url.rstrip("/") + "/")
        driver.execute_script("sessionStorage.clear(); localStorage.clear();")
        if key is not None or server is not None:
            driver.execute_script(
                "if (arguments[0] !== null) sessionStorage.setItem('reverb.apiKey', arguments[0]);"
                "if (arguments[1] !== null) sessionStorage.setItem('reverb.server', arguments[1]);",
                key,
                server,
            )
        driver.get(url.rstrip("/") + "/")
        wait_until(lambda: driver.execute_script("return document.body.dataset.ready"), 20, "page")
        wait_until(lambda: text_of(driver, "server-info") != "Connecting…", 20, "server check")
        return driver

    return open_page


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def shown(driver, element_id: str) -> bool:
    return not driver.execute_script(f"return document.getElementById('{element_id}').hidden")


def screenshot(driver, name: str, tmp_path: Path) -> None:
    folder = SCREENSHOTS if os.environ.get("REVERB_UPDATE_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(max(width, 375), min(height + 120, 2400))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def upload(driver, path: Path, timeout_s: float = 90) -> str:
    """Choose ``path`` in the file input; wait for the result or the error box."""
    driver.find_element("id", "file").send_keys(str(path))
    return wait_until(
        lambda: (
            (
                "done"
                if driver.execute_script(
                    "return document.getElementById('result').dataset.state === 'done'"
                    " && document.getElementById('status').hidden"
                )
                else None
            )
            or ("error" if shown(driver, "error") else None)
        ),
        timeout_s,
        "a transcript or an error",
    )


def api(url: str, path: Path, key: str | None = None, **fields: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with path.open("rb") as f:
        return httpx.post(
            url + TRANSCRIPTIONS,
            files={"file": (path.name, f)},
            data=fields,
            headers=headers,
            timeout=120,
        )


# --------------------------------------------------------------------------- upload


def test_upload_shows_the_transcript_on_a_timeline_and_a_word_seeks_the_player(
    serve_cluster, page, tmp_path
):
    clip = DEMO_DATA / "heldout_05.opus"
    driver = page(serve_cluster.demo_url)
    assert "Model " in text_of(driver, "server-info")
    assert upload(driver, clip) == "done"
    expected = api(
        serve_cluster.demo_url,
        clip,
        response_format="verbose_json",
        **{"timestamp_granularities[]": "word"},
    ).json()
    assert text_of(driver, "transcript") == expected["text"] == manifest_text(clip.name)
    words = driver.find_elements("css selector", "#timeline button.word")
    assert [w.text for w in words] == [w["word"] for w in expected["words"]]
    shades = {w.get_attribute("class").split()[-1] for w in words}
    assert shades <= {"c1", "c2", "c3", "c4"}
    # Words sit left to right in time order, each at its start.
    lefts = [w.location["x"] for w in words]
    assert lefts == sorted(lefts) and lefts[0] < lefts[-1]
    words[4].click()
    seek = expected["words"][4]["start"]
    wait_until(
        lambda: (
            abs(
                driver.execute_script("return document.getElementById('player').currentTime") - seek
            )
            < 0.3
        ),
        10,
        "the player at the chosen word",
    )
    screenshot(driver, "upload", tmp_path)


def test_options_are_sent_and_change_the_result(serve_cluster, page):
    """Verbatimicity 0 and CTC prefix beam search reach the server: the page shows what
    the API returns with those options, which differs from the verbatim default."""
    clip = DEMO_DATA / "heldout_13.opus"  # "we will um uh read the coffee yesterday"
    driver = page(serve_cluster.demo_url)
    driver.execute_script(
        "const v = document.getElementById('verbatimicity'); v.value = '0';"
        "v.dispatchEvent(new Event('input'));"
        "document.getElementById('mode').value = 'ctc_prefix_beam_search';"
    )
    assert text_of(driver, "verbatimicity-value") == "0.00"
    assert upload(driver, clip) == "done"
    clean = api(
        serve_cluster.demo_url, clip, verbatimicity=0, decoding_mode="ctc_prefix_beam_search"
    ).json()["text"]
    verbatim = api(serve_cluster.demo_url, clip).json()["text"]
    assert text_of(driver, "transcript") == clean
    assert "um" in verbatim.split() and "um" not in clean.split()


def test_every_download_equals_the_servers_own_format(serve_cluster, page, downloads):
    clip = DEMO_DATA / "heldout_21.opus"
    driver = page(serve_cluster.demo_url)
    assert upload(driver, clip) == "done"
    for button in driver.find_elements("css selector", "#downloads button"):
        button.click()
    for fmt, extension in [("text", "txt"), ("srt", "srt"), ("vtt", "vtt"), ("ctm", "ctm")]:
        saved = wait_for_download(downloads, f"heldout_21.{extension}").decode()
        assert saved == api(serve_cluster.demo_url, clip, response_format=fmt).text, fmt
    saved = json.loads(wait_for_download(downloads, "heldout_21.json"))
    granularities = {"timestamp_granularities[]": ["word", "segment"]}
    assert (
        saved
        == api(serve_cluster.demo_url, clip, response_format="verbose_json", **granularities).json()
    )
    # The format picker shows the same text on the page.
    driver.execute_script(
        "const f = document.getElementById('format'); f.value = 'srt';"
        "f.dispatchEvent(new Event('change'));"
    )
    assert (
        text_of(driver, "formatted")
        == api(serve_cluster.demo_url, clip, response_format="srt").text
    )


# --------------------------------------------------------------------------- errors and the key


def test_the_apis_errors_are_shown_in_words(serve_cluster, page, tmp_path):
    """415 for a file that is not audio; 413 over the guarded app's upload limit; 503
    with its Retry-After while the guarded app's one intake place is held."""
    not_audio = tmp_path / "notes.mp3"
    not_audio.write_bytes(b"these are not audio bytes " * 40)
    driver = page(serve_cluster.demo_url)
    assert upload(driver, not_audio) == "error"
    assert "not audio" in text_of(driver, "error") and "HTTP 415" in text_of(driver, "error")
    assert not shown(driver, "result") and not shown(driver, "status")
    screenshot(driver, "error", tmp_path)

    big = tmp_path / "long.wav"
    big.write_bytes(wav_of_seconds((GUARDED_UPLOAD_LIMIT // 32000) + 2))
    driver = page(serve_cluster.guarded_url, key=API_KEY)
    assert upload(driver, big) == "error"
    assert "HTTP 413" in text_of(driver, "error")

    small = tmp_path / "short.wav"
    small.write_bytes(wav_of_seconds(1))
    holder = {"Authorization": f"Bearer {API_KEY}", CLIENT_ID_HEADER: "holder"}
    with stalled_upload(serve_cluster.guarded_url, holder):
        assert upload(driver, small) == "error"
        message = text_of(driver, "error")
    assert "busy" in message and "Try again in 2 s" in message and "HTTP 503" in message
    # The page recovers: the next upload goes through.
    assert upload(driver, small) == "done"


def wav_of_seconds(seconds: float) -> bytes:
    from serve_app.engine.audio import encode_wav

    rng = np.random.default_rng(0)
    return encode_wav(0.05 * rng.standard_normal(int(16000 * seconds)).astype(np.float32), 16000)


def test_the_api_key_path_asks_for_the_key_and_keeps_it_in_the_tab_only(
    serve_cluster, page, tmp_path
):
    driver = page(serve_cluster.guarded_url)
    assert "HTTP 401" in text_of(driver, "error")
    assert driver.execute_script("return document.getElementById('connection').open")
    field = driver.find_element("id", "api-key")
    field.send_keys(API_KEY)
    driver.find_element("id", "server").click()  # leaving the field commits it
    wait_until(lambda: not shown(driver, "error"), 10, "the error cleared by the key")
    assert "Model " in text_of(driver, "server-info")
    clip = tmp_path / "short.wav"
    clip.write_bytes(wav_of_seconds(2))
    assert upload(driver, clip) == "done"
    assert text_of(driver, "transcript") == (
        api(serve_cluster.guarded_url, clip, key=API_KEY).json()["text"] or "(no speech recognised)"
    )
    storage = driver.execute_script(
        "return [sessionStorage.getItem('reverb.apiKey'), JSON.stringify(localStorage)]"
    )
    assert storage == [API_KEY, "{}"]
    assert driver.find_element("id", "api-key").get_attribute("type") == "password"


def test_the_page_talks_to_another_server_only_where_its_cors_allows(serve_cluster, page, tmp_path):
    """Served from 127.0.0.1 (an allowed origin of the guarded app), pointed at the
    guarded app through ``localhost`` (another origin): it works. Served from
    localhost (not allowed) and pointed back at 127.0.0.1: the browser blocks it and
    the page says why."""
    port = serve_cluster.port
    clip = tmp_path / "short.wav"
    clip.write_bytes(wav_of_seconds(2))
    driver = page(serve_cluster.demo_url, key=API_KEY, server=f"http://localhost:{port}/guarded")
    assert f"localhost:{port}/guarded/" in text_of(driver, "server-info")
    assert upload(driver, clip) == "done"
    expected = api(serve_cluster.guarded_url, clip, key=API_KEY).json()["text"]
    assert text_of(driver, "transcript") == (expected or "(no speech recognised)")

    driver = page(
        f"http://localhost:{port}/demo", key=API_KEY, server=f"http://127.0.0.1:{port}/guarded"
    )
    assert "Could not reach the server" in text_of(driver, "error")
    assert "cors_origins" in text_of(driver, "error")


# --------------------------------------------------------------------------- record


def test_recording_the_microphone_transcribes_the_take(
    serve_cluster, page, microphone_wav, tmp_path
):
    """The fake microphone plays a held-out clip from the moment the page opens it; a
    take stopped after the clip's speech is transcribed as the clip's text."""
    driver = page(serve_cluster.demo_url)
    driver.find_element("id", "tab-record").click()
    assert shown(driver, "panel-record") and not shown(driver, "panel-upload")
    driver.find_element("id", "record-start").click()
    wait_until(
        lambda: not driver.find_element("id", "record-stop").get_attribute("disabled"),
        10,
        "recording",
    )
    speech_s = (
        MICROPHONE_LEAD_S + len(decode_audio((DEMO_DATA / MICROPHONE_CLIP).read_bytes())) / 16000
    )
    wait_until(
        lambda: (
            driver.execute_script("return document.getElementById('record-level').value") > 0.05
        ),
        10,
        "the level meter moving",
    )
    time.sleep(speech_s + 0.8)
    driver.find_element("id", "record-stop").click()
    wait_until(
        lambda: (
            driver.execute_script(
                "return document.getElementById('result').dataset.state === 'done'"
                " && document.getElementById('status').hidden"
            )
            or shown(driver, "error")
        ),
        60,
        "transcript",
    )
    assert not shown(driver, "error"), text_of(driver, "error")
    assert text_of(driver, "transcript") == manifest_text(MICROPHONE_CLIP)
    screenshot(driver, "record", tmp_path)


# --------------------------------------------------------------------------- live


def first_turn(driver, state: str) -> str | None:
    return driver.execute_script(
        f"const t = document.querySelector('#captions .turn[data-state={state}]');"
        "return t && t.textContent.trim()"
    )


def test_live_captions_show_partial_words_then_the_clips_text_as_the_final(
    serve_cluster, page, tmp_path
):
    """The fake microphone plays the held-out clip, silence around it, in a loop; the
    Live tab streams it over the realtime WebSocket (AudioWorklet, PCM16 at 24 kHz).
    Partial words show while it plays, and the server's VAD ends the turn in the
    silence after it, with the clip's text as the final."""
    driver = page(serve_cluster.demo_url)
    driver.find_element("id", "tab-live").click()
    assert shown(driver, "panel-live") and not shown(driver, "panel-upload")
    driver.find_element("id", "live-start").click()
    wait_until(
        lambda: (
            not driver.find_element("id", "live-stop").get_attribute("disabled")
            or shown(driver, "error")
        ),
        30,
        "the live session",
    )
    assert not shown(driver, "error"), text_of(driver, "error")
    wait_until(
        lambda: driver.execute_script("return document.getElementById('live-level').value") > 0.05,
        10,
        "the level meter moving",
    )
    partial = wait_until(lambda: first_turn(driver, "partial"), 20, "partial words")
    final = wait_until(
        lambda: first_turn(driver, "final") or (shown(driver, "error") and "(error)"),
        30,
        "the turn's final",
    )
    assert not shown(driver, "error"), text_of(driver, "error")
    screenshot(driver, "live", tmp_path)
    driver.find_element("id", "live-stop").click()
    wait_until(lambda: text_of(driver, "live-state") == "Stopped", 30, "the session stopped")
    assert final == manifest_text(MICROPHONE_CLIP)
    assert partial.split()[0] == final.split()[0]


def test_live_captions_need_the_key_where_the_server_has_one(serve_cluster, page):
    """The page at ``/`` opens ``/v1/realtime`` (the tiny model's realtime app, which has
    a key): refused in words without the key, connected with it (the subprotocol)."""
    driver = page(serve_cluster.base_url)
    driver.find_element("id", "tab-live").click()
    driver.find_element("id", "live-start").click()
    wait_until(lambda: shown(driver, "error"), 30, "the refusal")
    assert "refused" in text_of(driver, "error") and "API key" in text_of(driver, "error")
    assert not driver.find_element("id", "live-start").get_attribute("disabled")

    driver = page(serve_cluster.base_url, key=API_KEY)
    driver.find_element("id", "tab-live").click()
    driver.find_element("id", "live-start").click()
    wait_until(lambda: text_of(driver, "live-state") == "Listening", 30, "the live session")
    assert not shown(driver, "error"), text_of(driver, "error")
    driver.find_element("id", "live-stop").click()
    wait_until(lambda: text_of(driver, "live-state") == "Stopped", 30, "the session stopped")


# --------------------------------------------------------------------------- layout and access


def test_the_page_fits_a_375_px_phone_screen(serve_cluster, page, tmp_path):
    driver = page(serve_cluster.demo_url)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True},
    )
    assert upload(driver, DEMO_DATA / "heldout_09.opus") == "done"
    width = driver.execute_script("return window.innerWidth")
    assert width == 375
    # Nothing wider than the screen but the timeline, which scrolls inside its box.
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    for element_id in ("file", "mode", "verbatimicity", "format", "player", "downloads"):
        box = driver.execute_script(
            "const r = (document.getElementById(arguments[0]).closest('label') "
            "&& arguments[0] === 'file' ? document.querySelector('label[for=file]') "
            ": document.getElementById(arguments[0])).getBoundingClientRect();"
            "return [r.left, r.right];",
            element_id,
        )
        assert box[0] >= 0 and box[1] <= width, (element_id, box)
    screenshot_phone(driver, tmp_path)


def screenshot_phone(driver, tmp_path: Path) -> None:
    folder = SCREENSHOTS if os.environ.get("REVERB_UPDATE_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 375, "height": min(height, 2400), "deviceScaleFactor": 1, "mobile": True},
    )
    driver.save_screenshot(str(folder / "phone.png"))


def test_controls_are_labelled_keyboard_usable_and_readable(serve_cluster, page):
    from selenium.webdriver.common.keys import Keys

    driver = page(serve_cluster.demo_url)
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select, button, meter')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !e.textContent.trim()).map(e => e.id || e.outerHTML)"
    )
    assert unlabelled == []
    # Tabs follow the ARIA pattern: arrows move between them.
    upload_tab = driver.find_element("id", "tab-upload")
    upload_tab.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element.get_attribute("id") == "tab-record"
    assert shown(driver, "panel-record") and not shown(driver, "panel-upload")
    driver.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    assert shown(driver, "panel-upload")
    # A keyboard focus is visible.
    driver.switch_to.active_element.send_keys(Keys.TAB)
    outline = driver.execute_script(
        """const s = getComputedStyle(document.activeElement);
        return [s.outlineStyle, s.outlineWidth];"""
    )
    assert outline[0] != "none" and outline[1] != "0px", outline
    # Text against its background: WCAG AA (4.5:1) for the page's text styles.
    pairs = driver.execute_script(
        """
        const bg = (e) => {
          for (; e; e = e.parentElement) {
            const c = getComputedStyle(e).backgroundColor;
            if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
          }
          return 'rgb(255, 255, 255)';
        };
        document.getElementById('error').hidden = false;
        document.getElementById('error').textContent = 'x';
        return ['server-info', 'key-hint', 'tab-record', 'tab-upload', 'error',
                'verbatimicity-hint']
          .concat([document.querySelector('label[for=file]')])
          .map(x => typeof x === 'string' ? document.getElementById(x) : x)
          .map(e => [e.id || e.tagName, getComputedStyle(e).color, bg(e)]);
        """
    )
    for name, fg, bg in pairs:
        ratio = contrast_ratio(rgb(fg), rgb(bg))
        assert ratio >= 4.5, (name, fg, bg, round(ratio, 2))


def rgb(css: str) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return r, g, b


def test_the_page_and_its_assets_are_served_without_the_key_with_a_strict_policy(serve_cluster):
    page = httpx.get(serve_cluster.guarded_url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(serve_cluster.guarded_url + "/ui/app.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(serve_cluster.guarded_url + "/v1/models", timeout=30).status_code == 401
    # Without the slash, the page's relative links would miss the route prefix.
    redirect = httpx.get(serve_cluster.guarded_url, timeout=30)
    assert redirect.status_code == 307
    assert redirect.headers["location"].endswith("/guarded/")
