"""report/index.html in a real headless Chromium, opened from the file system (no server): a click
on a confusion-matrix cell lists exactly that cell's stored predictions, and their audio players
point at files inside the report folder that the browser can decode. Needs chromium and
chromium-driver (``bash setup.sh`` installs them as root; MMER_SKIP_BROWSER=1 skips)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from models.html_report import AUDIO_DIR, HTML_NAME
from tests.fixtures.browser import headless_chromium
from tests.fixtures.runs import fake_report, stored_test_rows


@pytest.fixture()
def chrome():
    with headless_chromium() as driver:
        yield driver


def test_clicking_a_cell_lists_its_utterances_with_playable_audio(tmp_path, chrome):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    folder = fake_report(tmp_path)
    chrome.get((folder / HTML_NAME).as_uri())
    matrix = chrome.find_element(By.CSS_SELECTOR, 'table.cm[data-run="fusion/small+cnn"]')
    cell = next(td for td in matrix.find_elements(By.CSS_SELECTOR, "td.hit")
                if td.get_attribute("data-true") != td.get_attribute("data-pred"))
    i, j, shown = int(cell.get_attribute("data-true")), int(cell.get_attribute("data-pred")), int(cell.text)
    cell.click()
    table = WebDriverWait(chrome, 10).until(lambda d: d.find_element(By.ID, "utterances"))
    classes = [th.text for th in matrix.find_elements(By.CSS_SELECTOR, "thead th")][1:]
    want = [r["id"] for r in stored_test_rows(tmp_path, "fusion", "small+cnn")
            if r["label"] == classes[i] and int(np.argmax(r["probs"])) == j]
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == want and len(want) == shown > 0
    assert f"({shown} utterance" in chrome.find_element(By.CSS_SELECTOR, "#cell-list h3").text
    heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert heads[4:] == ["speech (ser/small)", "text (ter/cnn)", "fused (fusion/small+cnn)"]
    assert rows[0].find_elements(By.CSS_SELECTOR, "td.probs div.top")[2].text.startswith(classes[j])
    players = table.find_elements(By.TAG_NAME, "audio")
    assert len(players) == shown  # misclassified by the fusion: its audio was copied
    for player in players:
        src = urlparse(player.get_property("src"))  # resolved against the page's file:// URL
        path = Path(unquote(src.path))
        assert src.scheme == "file" and path.is_file() and path.parent == folder / AUDIO_DIR
    # the browser itself opens and decodes the first file (0.3 s of tone)
    chrome.execute_script("arguments[0].preload = 'metadata'; arguments[0].load();", players[0])
    WebDriverWait(chrome, 10).until(lambda d: d.execute_script("return arguments[0].readyState", players[0]) >= 1)
    assert abs(chrome.execute_script("return arguments[0].duration", players[0]) - 0.3) < 0.02
    assert not [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
