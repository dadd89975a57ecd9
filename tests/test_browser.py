"""report.html renders in headless Chromium: no script errors, every image decodes, and a
screenshot is produced. Needs Debian's chromium (CI installs it); skipped without it."""

import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from ftkit.cli import main
from conftest import TINY, write_split_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-probe', `images=${imgs.length} broken=${bad} errors=${window.__errors.length}`);
});
</script>"""

# CI sets FTKIT_REQUIRE_BROWSER=1 so that a missing chromium fails there instead of skipping.
REQUIRED = os.environ.get("FTKIT_REQUIRE_BROWSER") == "1"
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="chromium not installed")]


def _chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    write_split_folder(tmp / "data", sizes=(("train", 10), ("val", 3), ("test", 6)))
    for name in ("a", "b"):
        r = CliRunner().invoke(main, ["finetune", "--data", str(tmp / "data"), "--backbone", TINY, "--no-pretrained",
                                      "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0",
                                      "--lr", "0.003" if name == "a" else "0.001",
                                      "--project", str(tmp / "runs"), "--name", name])
        assert r.exit_code == 0, r.output
    return tmp


@pytest.mark.parametrize("page", ["run", "comparison"])
def test_report_renders_with_every_image(run, tmp_path, page):
    if page == "run":
        html = (run / "runs" / "a" / "report.html").read_text()
    else:
        out = tmp_path / "cmp.html"
        r = CliRunner().invoke(main, ["report", str(run / "runs" / "a"), str(run / "runs" / "b"), "--html", str(out)])
        assert r.exit_code == 0, r.output
        html = out.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'data-probe="images=(\d+) broken=(\d+) errors=(\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    images, broken, errors = map(int, found.groups())
    assert broken == 0 and errors == 0
    if page == "run":
        assert images >= 5  # 2 confusion matrices, curves, calibration, gallery thumbnails
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,2000", f"--screenshot={shot}", probed.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_comparison_lists_exactly_the_differing_keys(run, tmp_path):
    from ftkit.html_report import config_differences
    import yaml

    configs = {n: yaml.safe_load((run / "runs" / n / "args.yaml").read_text()) for n in ("a", "b")}
    diff = config_differences(configs)
    assert set(diff) == {"lr", "name"}
    assert diff["lr"] == {"a": 0.003, "b": 0.001}
