"""The report page (classify.report): self-contained HTML, every section, thumbnails, caps, a browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, ROOT, colour_image, run_cli, run_make, write_class_folder

HEADS = ["logreg", "svm", "mlp"]
SECTION_IDS = ["run", "data", "embedding", "comparison", "figures", "gallery", "audit"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


class Page(HTMLParser):
    """The parts of a page the tests look at: images, section ids, gallery cards, text."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs, self.sections, self.cards, self.scripts_src, self.links = [], [], 0, [], []
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag != "wbr":  # <wbr> is a line-break opportunity inside a word
            self.text.append(" ")
        if tag == "img":
            self.imgs.append(a)
        elif tag == "section" and "id" in a:
            self.sections.append(a["id"])
        elif tag == "div" and "card" in (a.get("class") or "").split():
            self.cards += 1
        elif tag == "script" and a.get("src"):
            self.scripts_src.append(a["src"])
        elif tag == "link":
            self.links.append(a)

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Features and a comparison on split folders where three red images sit in test/blue.

    Those three are misclassified by every head (so the gallery has entries), and one damaged
    file is rejected by stage 1. TensorFlow starts once for the module.
    """
    import classify
    import extract

    root = tmp_path_factory.mktemp("report")
    in_dir = root / "in"
    write_class_folder(in_dir, 8, split="train")
    write_class_folder(in_dir, 3, split="test")
    for i in range(3):
        colour_image(COLOURS["red"], seed=500 + i).save(in_dir / "test" / "blue" / f"wrong_{i}.png")
    (in_dir / "train" / "red" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    settings = extract.Settings(weights="none", size=64)
    extract.extract_features(in_dir, root / "features", settings, progress=False)
    classify.compare(root / "features", settings, root / "out", folds=3, jobs=1, log=lambda *a: None,
                     in_dir=in_dir, tune="0", repeats=1)
    return root


@pytest.fixture(scope="module")
def report(experiment):
    """The report written through the command line, without an audit."""
    r = run_cli("classify.report", "--in", experiment / "in", "--features", experiment / "features",
                "--out", experiment / "out")
    assert r.returncode == 0, r.stderr
    path = experiment / "out" / "report.html"
    assert f"report: {path}" in r.stdout
    return path


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    assert "http://" not in text and "https://" not in text
    assert not page.scripts_src and not page.links  # no external scripts, styles or fonts
    assert "@import" not in text and "url(" not in text
    assert page.imgs and all(img["src"].startswith("data:image/") for img in page.imgs)
    assert "@media print" in text


def test_report_has_every_section_and_head(report):
    page = Page(report.read_text(encoding="utf-8"))
    assert page.sections == SECTION_IDS
    text = page.all_text
    for head in HEADS:
        assert head in text
        assert f"classification report: {head}" in text
    assert "Random weights." in text  # weights "none": the banner
    assert "vgg16-avg-64-none-np1" in text
    assert "train/red/damaged.png" in text  # rejected.csv is shown
    audit_text = Page(report.read_text(encoding="utf-8").split('<section id="audit">', 1)[1]).all_text
    assert re.search(r"run\s+make audit", audit_text)


def test_report_embeds_figures_map_and_gallery(report, experiment):
    page = Page(report.read_text(encoding="utf-8"))
    alts = [img.get("alt", "") for img in page.imgs]
    figures = sorted(p.name for p in (experiment / "out" / "figures").glob("*.png"))
    assert {"confusion_matrices.png", "roc.png", "mlp_history.png"} <= set(figures)
    assert sum(img.get("class") == "fig" for img in page.imgs) == len(figures)
    assert "fig sheet" not in [img.get("class") for img in page.imgs]  # no audit yet
    assert any("PCA" in a for a in alts)
    # the three red images filed under test/blue are wrong for every head
    gallery = [img for img in page.imgs if "thumb" in (img.get("class") or "")]
    assert page.cards == len(gallery) >= 3
    for i in range(3):
        assert f"test/blue/wrong_{i}.png" in alts
    thumbs = list((experiment / "out" / "report_cache" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == len(gallery)
    for img in gallery:
        raw = img["src"].split(",", 1)[1]
        with Image.open(io.BytesIO(base64.b64decode(raw))) as im:
            assert im.size == (96, 96)


def test_thumbnails_are_cached_and_unreadable_images_get_a_placeholder(experiment, report, tmp_path):
    from classify.report import build_report

    logs = []
    build_report(experiment / "in", experiment / "features", experiment / "out", log=logs.append)
    assert re.search(r"thumbnails: 0 made, [1-9]\d* reused", logs[-1]), logs
    # A copy whose input lost one misclassified image and whose thumbnail cache is empty.
    in_copy, out_copy = tmp_path / "in", tmp_path / "out"
    shutil.copytree(experiment / "in", in_copy)
    shutil.copytree(experiment / "out", out_copy, ignore=shutil.ignore_patterns("report_cache"))
    (in_copy / "test" / "blue" / "wrong_0.png").write_bytes(b"gone bad")
    logs = []
    path = build_report(in_copy, experiment / "features", out_copy, log=logs.append)
    assert "1 unreadable" in logs[-1]
    page = Page(path.read_text(encoding="utf-8"))
    src = {img["alt"]: img["src"] for img in page.imgs}
    assert src["test/blue/wrong_0.png"].startswith("data:image/png")  # the placeholder
    assert src["test/blue/wrong_1.png"].startswith("data:image/jpeg")


def test_caps_are_applied_and_said(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    path = build_report(experiment / "in", experiment / "features", out, max_gallery=2, max_tsne=10,
                        log=lambda *a: None)
    page = Page(path.read_text(encoding="utf-8"))
    assert page.cards == 2
    text = page.all_text
    assert re.search(r"Showing the first 2 of \d+ \(the cap is 2\)", text)
    assert "t-SNE ran on a sample of 10 of the" in text


def _write_audit(out: Path) -> None:
    """Audit files shaped like classify.audit's (columns may vary: the report shows what is there)."""
    audit = out / "audit"
    audit.mkdir(parents=True, exist_ok=True)
    (audit / "summary.json").write_text(json.dumps({
        "features_key": "vgg16-avg-64-none", "n_images": 25,
        "dup_threshold": 0.9973, "dup_threshold_rule": "auto: from the nearest-neighbour distances",
        "duplicates": {"pairs": 2, "exact": 0, "near": 2, "cross_split": 1, "label_disagree": 0},
        "label_suspects": {"count": 3, "head": "logreg", "folds": 3},
        "scores": {"logreg": {"accuracy": 0.81, "accuracy_no_dups": 0.78, "cv_mean": 0.8, "cv_mean_groups": 0.77},
                   "svm": {"accuracy": 0.79, "accuracy_no_dups": 0.74, "cv_mean": 0.8, "cv_mean_groups": 0.75}},
        "seed": 42,
    }), encoding="utf-8")
    (audit / "duplicates.csv").write_text(
        "path_a,label_a,split_a,path_b,label_b,split_b,similarity,kind,cross_split\n"
        "train/red/img_000.png,red,train,test/red/img_000.png,red,test,0.9991,near,1\n"
        "train/blue/img_001.png,blue,train,train/blue/img_002.png,blue,train,0.9980,near,0\n", encoding="utf-8")
    (audit / "label_suspects.csv").write_text(
        "rank,path,label,suggested_label,label_quality\n"
        "1,test/blue/wrong_0.png,blue,red,0.02\n2,test/blue/wrong_1.png,blue,red,0.03\n"
        "3,missing/file.png,red,blue,0.4\n", encoding="utf-8")
    Image.fromarray(np.full((40, 120, 3), 200, np.uint8)).save(audit / "duplicates.png")


def test_audit_section_shows_the_audit(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    _write_audit(out)
    path = build_report(experiment / "in", experiment / "features", out, log=lambda *a: None)
    text = path.read_text(encoding="utf-8")
    audit_html = text.split('<section id="audit">', 1)[1].split("</section>", 1)[0]
    page = Page(audit_html)
    words = page.all_text
    assert "make audit" not in words
    for needle in ("0.9973", "dup_threshold", "duplicates: cross_split", "label_suspects: count",
                   "Scores: plain and leakage-aware", "accuracy_no_dups", "cv_mean_groups", "0.7700",
                   "similarity", "suggested_label", "missing/file.png", "duplicates.png"):
        assert needle in words, needle
    alts = [img["alt"] for img in page.imgs]
    assert {"train/red/img_000.png", "test/red/img_000.png", "test/blue/wrong_0.png",
            "duplicates.png"} <= set(alts)
    assert "missing/file.png" not in alts  # not an image here: shown as text only
    assert all(img["src"].startswith("data:image/") for img in page.imgs)
    assert "http://" not in text and "https://" not in text


def test_damaged_audit_files_do_not_break_the_page(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    (out / "audit").mkdir()
    (out / "audit" / "summary.json").write_text("{not json", encoding="utf-8")
    (out / "audit" / "duplicates.csv").write_text("", encoding="utf-8")
    path = build_report(experiment / "in", experiment / "features", out, log=lambda *a: None)
    assert "could not be read" in path.read_text(encoding="utf-8")


def test_a_missing_cache_still_gives_a_page_that_says_so(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["features_folder"] = str(tmp_path / "gone")
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    path = build_report(experiment / "in", tmp_path / "empty", out, log=lambda *a: None)
    page = Page(path.read_text(encoding="utf-8"))
    assert page.sections == SECTION_IDS
    assert "was not found" in page.all_text
    assert "could not be read, so there is no map" in page.all_text
    assert page.cards >= 3  # the gallery needs predictions.csv and the images, not the cache


def test_missing_run_json_says_to_compare_first(tmp_path):
    r = run_cli("classify.report", "--in", tmp_path, "--features", tmp_path, "--out", tmp_path / "none")
    assert r.returncode == 2
    assert "run.json" in r.stderr and "make compare" in r.stderr


def test_report_does_not_import_tensorflow(experiment, tmp_path):
    code = ("import sys; from classify.report import main; "
            f"main(['--in', {str(experiment / 'in')!r}, '--features', {str(experiment / 'features')!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    shutil.copytree(experiment / "out", tmp_path / "out")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_make_report_and_demo_wiring(experiment, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out, ignore=shutil.ignore_patterns("report*"))
    r = run_make("report", f"IN={experiment / 'in'}", f"FEATURES={experiment / 'features'}", f"OUT={out}")
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").is_file()
    assert f"report: {out / 'report.html'}" in r.stdout
    # `make demo` ends by writing the report (dry run: the demo itself is slow)
    r = run_make("-n", "demo", timeout=60)
    last = [line for line in r.stdout.splitlines() if line.strip()][-1]
    assert "-m classify.report" in last and '--out "demo/out"' in last


def _chromium(*args, timeout=120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", *args],
            capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                    reason=f"no chromium at {CHROMIUM}; `make test` installs it with apt-get when it can "
                           "(Debian, as root)")
def test_report_renders_in_headless_chromium(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    _write_audit(out)
    path = build_report(experiment / "in", experiment / "features", out, log=lambda *a: None)
    url = path.resolve().as_uri()

    dom = _chromium("--dump-dom", "--window-size=1280,1000", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    rendered = re.search(r'data-rendered="images=(\d+) broken=(\d+) sections=([^" ]*) height=(\d+)"',
                         dom.stdout)
    assert rendered, "the page's script did not run"
    assert int(rendered.group(1)) >= 8 and rendered.group(2) == "0"
    assert rendered.group(3).split(",") == SECTION_IDS

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    height = min(int(rendered.group(4)) + 20, 12000)  # the whole page, as it is at 1280 px wide
    r = _chromium(f"--screenshot={shot}", f"--window-size=1280,{height}", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert not [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    with Image.open(shot) as im:
        assert im.size == (1280, height)
        colours = im.convert("RGB").resize((64, 200)).getcolors(64 * 200)
        assert colours and len(colours) > 20  # not a blank page


def test_the_pca_map_draws_a_sample_of_large_caches(monkeypatch):
    """At 1,000,000 images every dot and every error ring made the PCA panel one blot: it draws a
    seeded sample, fitted on every vector, and says so."""
    import pandas as pd

    from classify import report

    monkeypatch.setattr(report, "MAX_PCA_POINTS", 40)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    man = pd.DataFrame({"path": [f"c{i % 2}/{i}.png" for i in range(120)], "label": [f"c{i % 2}" for i in range(120)]})
    wrong = {f"c{i % 2}/{i}.png" for i in range(0, 120, 3)}
    html = report.section_embedding(X, man, wrong, seed=1, max_tsne=30)
    assert "draws a sample of 40" in html and "(40 of them" not in html
    assert "black rings mark evaluated images that at least one head got wrong (40, " in html
    small = report.section_embedding(X[:30], man.iloc[:30], wrong, seed=1, max_tsne=30)
    assert "drawn" not in small
