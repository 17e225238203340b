"""The run page in a real browser (Debian's chromium, headless): it renders, and the worst example is on it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.workbench import small_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary, or the test is skipped: a test installs nothing (`./workbench.sh test` installs it)."""
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (`./workbench.sh test` installs Debian's package when run as root with "
                    "apt-get; or `apt-get install chromium`)")
    return found


def test_run_page_renders_with_the_worst_example(tmp_path, chromium):
    run_dir = tmp_path / "run"
    ids = small_run(run_dir)
    url = (run_dir / "index.html").as_uri()
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run([chromium, *flags, "--window-size=1280,3000", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    from PIL import Image  # matplotlib's dependency

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 3000)
    assert len(set(image.resize((64, 150)).getdata())) > 20, "the screenshot is blank"
    worst_block = dom.split("The worst", 1)[1]
    assert ids["worst"] in worst_block and "repeats" in worst_block and "cut at max_new_tokens" in worst_block
    spread = dom.split("The worst", 1)[0]
    assert ids["best"] in spread and ids["worst"] in spread, "the spread runs from rank 1 to the last rank"
    assert "Synthetic demo data" in dom and "Stopped:" in dom
    assert "2.5% of summaries reached max_new_tokens=64" in dom
