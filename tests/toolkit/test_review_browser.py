"""The review page in a real browser (Debian chromium + chromium-driver, driven by selenium): keyboard review,
reload keeps the position, exactly one corrections line per decision, the mouse, and the page at 1366x768.

Set CRISIS_REVIEW_SCREENSHOT=docs/review_page.png to also save the 1366x768 screenshot there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_testkit import TWO_HEADS, make_queue, read_lines, served, state_for

from crisis_tool.review.app import create_app

WAIT_S = 20
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")


def _skip(reason: str) -> None:
    print(f"SKIPPED browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture()
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        _skip("chromium or chromedriver not found (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip("selenium is not installed (pip install 'crisis-tool[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,768", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition, message=f"waited for {what}")


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the page to load")


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _press(driver: Any, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _decided(driver: Any, task: str) -> tuple[str, str | None]:
    """(status text, chosen label or None) of a head's card."""
    from selenium.webdriver.common.by import By

    card = driver.find_element(By.CSS_SELECTOR, f".head[data-task={task}]")
    chosen = card.find_elements(By.CSS_SELECTOR, "button.chosen")
    return card.find_element(By.CSS_SELECTOR, ".status").text, chosen[0].get_attribute("data-label") if chosen else None


def _shows_post(driver: Any, post_id: str) -> bool:
    return _text(driver, "#postid").startswith(f"id {post_id}")


def test_keyboard_review_reload_keeps_position_and_three_lines(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    queue = make_queue(tmp_path / "q", TWO_HEADS, count=6)
    corrections = tmp_path / "corrections.jsonl"
    with served(create_app(state_for(queue, corrections))) as url:
        _open(browser, url + "/")
        assert _shows_post(browser, "p0") and _text(browser, "#where") == "post 1 / 6"
        _press(browser, "2")  # informative head (focused): model says not_informative -> informative
        _wait(browser, lambda d: _decided(d, "informative") == ("✓ corrected", "informative"), "the first correction")
        _press(browser, "3")  # focus moved to damage: model says mild_damage -> severe_damage
        _wait(browser, lambda d: _shows_post(d, "p1"), "the next post after both heads")
        _press(browser, Keys.ENTER)  # accept the model's informative label of p1
        _wait(browser, lambda d: _decided(d, "informative") == ("✓ accepted", "informative"), "the accept")
        assert len(read_lines(corrections)) == 3  # saved at once, before any reload

        browser.refresh()
        _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the reload")
        assert _shows_post(browser, "p1") and _text(browser, "#where") == "post 2 / 6"
        assert "focus" in browser.find_element("css selector", ".head[data-task=damage]").get_attribute("class")
        assert _decided(browser, "informative") == ("✓ accepted", "informative")
        assert _decided(browser, "damage") == ("not decided", None)
        assert _text(browser, "#counts") == "reviewed 1 · remaining 5"
        assert "informative: 50% (1/2)" in _text(browser, "#agreement")
        assert "damage: 0% (0/1)" in _text(browser, "#agreement")
        _check_layout(browser)
        _press(browser, Keys.ARROW_LEFT)  # look back at p0 (no decision) with its group open, for the picture
        _wait(browser, lambda d: _shows_post(d, "p0"), "the previous post")
        _press(browser, "m")
        _wait(browser, lambda d: "dup0a" in _text(d, "#members"), "the group members")
        _screenshot(browser, tmp_path / "review_page.png")

    lines = read_lines(corrections)
    assert [(x["id"], x["task"], x["label"], x["previous"], x["action"]) for x in lines] == [
        ("p0", "informative", "informative", "not_informative", "correct"),
        ("p0", "damage", "severe_damage", "mild_damage", "correct"),
        ("p1", "informative", "informative", "informative", "accept")]


def test_the_mouse_and_shift_click_for_the_whole_group(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    queue = make_queue(tmp_path / "q", TWO_HEADS, count=3)
    corrections = tmp_path / "c.jsonl"
    with served(create_app(state_for(queue, corrections))) as url:
        _open(browser, url + "/")
        assert _text(browser, "#groupcount") == "near-duplicate group of 3 posts"
        browser.find_element(By.ID, "membersbtn").click()
        assert browser.find_element(By.ID, "members").is_displayed()
        button = browser.find_element(By.CSS_SELECTOR, ".head[data-task=damage] button[data-label=little_or_no_damage]")
        ActionChains(browser).key_down(Keys.SHIFT).click(button).key_up(Keys.SHIFT).perform()
        _wait(browser, lambda d: _decided(d, "damage") == ("✓ corrected", "little_or_no_damage"), "the click")
        browser.find_element(By.CSS_SELECTOR, ".head[data-task=informative] .accept").click()
        _wait(browser, lambda d: _shows_post(d, "p1"), "the next post")
        browser.find_element(By.ID, "prev").click()
        _wait(browser, lambda d: _shows_post(d, "p0"), "the previous post")
    lines = read_lines(corrections)
    assert [(x["id"], x["task"], x["label"]) for x in lines] == [
        ("p0", "damage", "little_or_no_damage"), ("dup0a", "damage", "little_or_no_damage"),
        ("dup0b", "damage", "little_or_no_damage"), ("p0", "informative", "not_informative")]


def _check_layout(driver: Any) -> None:
    """At a 1366x768 window everything to decide a post is visible without scrolling, with no sideways scroll."""
    metrics = driver.execute_script("""
        const r = (s) => document.querySelector(s).getBoundingClientRect();
        return {w: innerWidth, h: innerHeight, sw: document.documentElement.scrollWidth,
                heads: r('#heads').bottom, text: r('#text').bottom, keys: r('#keys').bottom,
                font: parseFloat(getComputedStyle(document.querySelector('#text')).fontSize)};""")
    assert metrics["w"] == 1366 and metrics["sw"] <= metrics["w"], metrics
    assert metrics["heads"] <= metrics["h"] and metrics["keys"] <= metrics["h"] + 1, metrics
    assert metrics["font"] >= 16, metrics


def _screenshot(driver: Any, path: Path) -> None:
    """A 1366x768 viewport screenshot: a real PNG of that size, not blank; copied where the env var says."""
    from PIL import Image

    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(path))
    with Image.open(path) as img:
        assert img.size == (1366, 768)
        colours = img.convert("RGB").resize((64, 36)).getcolors(64 * 36)
        assert colours is not None and len(colours) > 20
    target = os.environ.get("CRISIS_REVIEW_SCREENSHOT")
    if target:
        shutil.copyfile(path, target)
