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

from conftest import COLOURS, ROOT, colour_image, run_make, write_class_folder
from helpers import run_main

HEADS = ["logreg", "svm", "mlp"]
SECTION_IDS = ["answer", "comparison", "figures", "gallery", "data", "embedding", "audit", "settings"]
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
    in_dir = root / "colours"  # the dataset's name, which the page's title shows
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
    r = run_main("classify.report", "--in", experiment / "colours", "--features", experiment / "features",
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
    assert "RANDOM WEIGHTS" in text  # weights "none": the banner
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


def _moved_run(experiment, tmp_path, keep_thumbs: bool = False):
    """A copy of the run whose run.json says its images are in a copy of IN (as after a move)."""
    in_copy, out_copy = tmp_path / "colours", tmp_path / "out"
    shutil.copytree(experiment / "colours", in_copy)
    shutil.copytree(experiment / "out", out_copy,
                    ignore=None if keep_thumbs else shutil.ignore_patterns("report_cache"))
    run = json.loads((out_copy / "run.json").read_text(encoding="utf-8"))
    run["input"] = str(in_copy)
    (out_copy / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return in_copy, out_copy


def test_thumbnails_are_cached_and_unreadable_images_get_a_placeholder(experiment, report, tmp_path):
    from classify.report import build_report

    logs = []
    build_report(None, None, experiment / "out", log=logs.append)
    assert any(re.search(r"thumbnails: 0 made, [1-9]\d* reused", line) for line in logs), logs
    # A copy whose input lost one misclassified image and whose thumbnail cache is empty.
    in_copy, out_copy = _moved_run(experiment, tmp_path)
    (in_copy / "test" / "blue" / "wrong_0.png").write_bytes(b"gone bad")
    logs = []
    path = build_report(None, None, out_copy, log=logs.append)
    assert any("1 unreadable" in line for line in logs), logs
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    src = {img["alt"]: img["src"] for img in page.imgs}
    assert src["test/blue/wrong_0.png"].startswith("data:image/png")  # the placeholder
    assert src["test/blue/wrong_1.png"].startswith("data:image/jpeg")
    gallery = Page(text.split('<section id="gallery">', 1)[1].split("</section>", 1)[0]).all_text
    assert "test/blue/wrong_0.png" in gallery and "changed or damaged since make features" in gallery


def test_images_that_cannot_be_read_are_explained_with_what_to_pass(experiment, tmp_path):
    """Without IN the report drew every image as a grey placeholder, without a word."""
    from classify.report import build_report

    in_copy, out_copy = _moved_run(experiment, tmp_path)
    shutil.rmtree(in_copy)
    logs = []
    path = build_report(None, None, out_copy, log=logs.append)
    gallery = Page(path.read_text(encoding="utf-8").split('<section id="gallery">', 1)[1]
                   .split("</section>", 1)[0]).all_text
    assert f"IN={in_copy} is not a folder here" in gallery and "make report IN=" in gallery
    assert any("make report IN=" in line for line in logs), logs


def test_caps_are_applied_and_said(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    path = build_report(None, None, out, max_gallery=2, max_tsne=10,
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
        "duplicates": {"pairs": 2, "exact": 0, "near": 2, "cross_split": 1, "label_disagree": 0,
                       "exact_pairs_listed_per_group": 10, "search": "exact"},
        "label_suspects": {"count": 3, "head": "logreg", "folds": 3},
        "memory_plan": {"method": "exact", "n_jobs": 2, "memory_gb": 7.85, "reason": "fits"},
        "in_words": ["3 label suspects: images whose label the heads contradict."],
        "scores": {"logreg": {"accuracy": 0.81, "accuracy_no_dups": 0.78, "cv_mean": 0.8, "cv_mean_groups": 0.77},
                   "svm": {"accuracy": 0.79, "accuracy_no_dups": 0.74, "cv_mean": 0.8, "cv_mean_groups": 0.75}},
        "seed": 42,
    }), encoding="utf-8")
    (audit / "duplicates.csv").write_text(
        "path_a,label_a,split_a,path_b,label_b,split_b,similarity,kind,cross_split\n"
        "train/red/img_000.png,red,train,test/red/img_000.png,red,test,0.9991,near,1\n"
        "train/blue/img_001.png,blue,train,train/blue/img_002.png,blue,train,0.9980,near,0\n", encoding="utf-8")
    (audit / "label_suspects.csv").write_text(
        "rank,path,label,suggested_label,label_quality,p_label\n"
        "1,test/blue/wrong_0.png,blue,red,0.02,0.00001\n2,test/blue/wrong_1.png,blue,red,0.03,0.03\n"
        "3,missing/file.png,red,blue,0.4,0.4\n", encoding="utf-8")
    Image.fromarray(np.full((40, 120, 3), 200, np.uint8)).save(audit / "duplicates.png")


def test_audit_section_shows_the_audit(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    _write_audit(out)
    path = build_report(None, None, out, log=lambda *a: None)
    text = path.read_text(encoding="utf-8")
    audit_html = text.split('<section id="audit">', 1)[1].split("</section>", 1)[0]
    page = Page(audit_html)
    words = page.all_text
    assert "make audit" not in words
    for needle in ("0.9973", "duplicate threshold (cosine similarity)", "pairs across training and evaluated images",
                   "label suspects", "3 label suspects: images whose label the heads contradict.",
                   "Scores: plain and leakage-aware", "accuracy without duplicates", "CV, clusters kept whole",
                   "0.7700", "cosine similarity", "looks like", "missing/file.png",
                   "exact pairs listed per copy group", "memory plan", "< 0.001"):
        assert needle in words, needle
    tiles = re.findall(r'<div class="k">([^<]*)</div>', audit_html)
    assert "label suspects" in tiles and "duplicate pairs" in tiles
    assert not [t for t in tiles if "_" in t or "listed" in t or "memory" in t], tiles  # findings only
    assert "0.0000" not in words  # a tiny probability reads "< 0.001"
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
    path = build_report(None, None, out, log=lambda *a: None)
    assert "could not be read" in path.read_text(encoding="utf-8")


def test_a_missing_cache_still_gives_a_page_that_says_so(experiment, tmp_path):
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["features_folder"] = str(tmp_path / "gone")
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    path = build_report(None, None, out, log=lambda *a: None)
    page = Page(path.read_text(encoding="utf-8"))
    assert page.sections == SECTION_IDS
    assert "was not found" in page.all_text
    assert "could not be read, so there is no map" in page.all_text
    assert page.cards >= 3  # the gallery needs predictions.csv and the images, not the cache


def test_missing_run_json_says_to_compare_first(tmp_path):
    r = run_main("classify.report", "--in", tmp_path, "--features", tmp_path, "--out", tmp_path / "none")
    assert r.returncode == 2
    assert "run.json" in r.stderr and "make compare" in r.stderr


def test_report_does_not_import_tensorflow(experiment, tmp_path):
    code = ("import sys; from classify.report import main; "
            f"main(['--out', {str(tmp_path / 'out')!r}]); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    shutil.copytree(experiment / "out", tmp_path / "out")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_make_report_takes_everything_from_the_run_in_out(experiment, tmp_path):
    """`make report` without IN drew every image as a grey placeholder: with OUT alone it must
    draw every thumbnail of the run; an IN or a setting that conflicts with the run is refused."""
    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out, ignore=shutil.ignore_patterns("report*"))
    r = run_make("report", f"OUT={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"report: {out / 'report.html'}" in r.stdout
    assert re.search(r"thumbnails: [1-9]\d* made, 0 reused .*, 0 unreadable", r.stdout), r.stdout
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    thumbs = [img for img in page.imgs if "thumb" in (img.get("class") or "")]
    assert thumbs and all(img["src"].startswith("data:image/jpeg") for img in thumbs)
    assert "classes (2): blue 14, red 11" in r.stdout and "RANDOM WEIGHTS" in r.stdout

    r = run_make("report", f"OUT={out}", f"IN={tmp_path}")
    assert r.returncode != 0
    assert f"IN={tmp_path} was given" in r.stderr and f"IN={experiment / 'colours'}" in r.stderr, r.stderr
    r = run_make("report", f"OUT={out}", "SIZE=128", "WEIGHTS=none")  # WEIGHTS agrees, SIZE does not
    assert r.returncode != 0 and "SIZE=128 was given" in r.stderr and "SIZE=64" in r.stderr, r.stderr
    assert "WEIGHTS" not in r.stderr.split("(")[0]
    # `make demo` ends by writing the report (dry run: the demo itself is slow)
    r = run_make("-n", "demo", timeout=60)
    last = [line for line in r.stdout.splitlines() if line.strip()][-1]
    assert "-m classify.report" in last and '--out "demo/out"' in last


def test_the_page_opens_on_the_answer(report, experiment):
    """The report opened on a 25-row settings table, the comparison 2,300 px down, and its title
    was the cache key."""
    from classify.answer import read_answer

    text = report.read_text(encoding="utf-8")
    answer = read_answer(experiment / "out")
    title = re.search(r"<title>(.*?)</title>", text).group(1)
    assert "colours" in title and "vgg16-avg-64-none" not in title
    best = text.index(f"Best head: <strong>{answer.best.head}</strong>")
    interval = text.index(f"[{answer.best.cv_ci[0]:.3f}, {answer.best.cv_ci[1]:.3f}]", best)
    settings = text.index('<section id="settings">')
    assert best < interval < settings
    assert text.index('class="kv"', settings) > settings  # the settings tables come after
    for head in answer.tied:
        assert best < text.index(f"<strong>{head.head}</strong>", best) < settings
    assert "<details" in text[settings:text.index("</section>", settings)]  # folded away
    compact = text.index('table class="num compact"')
    assert best < compact < text.index('<section id="figures">') < settings


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
    path = build_report(None, None, out, log=lambda *a: None)
    url = path.resolve().as_uri()

    dom = _chromium("--dump-dom", "--window-size=1280,1000", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    rendered = re.search(r'data-rendered="images=(\d+) broken=(\d+) sections=([^" ]*) verdict=(\w+) '
                         r'height=(\d+)"', dom.stdout)
    assert rendered, "the page's script did not run"
    assert int(rendered.group(1)) >= 8 and rendered.group(2) == "0"
    assert rendered.group(3).split(",") == SECTION_IDS
    # the verdict column of the comparison is in view in a 1280-px-wide window, without scrolling
    assert rendered.group(4) == "visible"
    # the answer (best head, its interval, the tied heads) comes before the settings table
    from classify.answer import read_answer

    answer, body = read_answer(out), dom.stdout
    best = body.index(f"Best head: <strong>{answer.best.head}</strong>")
    settings = body.index('<section id="settings"')
    assert best < body.index(f"{answer.best.cv_ci[0]:.3f}, {answer.best.cv_ci[1]:.3f}]", best) < settings
    for head in answer.tied:
        assert best < body.index(f"<strong>{head.head}</strong>", best) < settings

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    height = min(int(rendered.group(5)) + 20, 12000)  # the whole page, as it is at 1280 px wide
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

    from classify.report import embedding as report

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


def test_the_more_data_sentence_speaks_of_the_best_head(experiment, tmp_path):
    """The report marked one head best while its "more data" sentence spoke of another (the head
    with the highest learning curve)."""
    from classify.answer import read_answer
    from classify.report import build_report

    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    best = read_answer(out).best.head
    other = next(h for h in HEADS if h != best)
    rows = ["head,train_size,score_mean,score_std,n_folds,settings"]
    for head, top in ((best, 0.70), (other, 0.95)):
        rows += [f"{head},20,{top - 0.2},0.01,3,fixed", f"{head},40,{top},0.01,3,fixed"]
    (out / "learning_curve.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["more_data"] = f"{other}'s score still rises at the full training size"
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    text = Page(build_report(None, None, out, log=lambda *a: None).read_text(encoding="utf-8")).all_text
    sentence = text.split("More images?", 1)[1][:200]
    assert sentence.strip().startswith(f"{best}'s score"), sentence


@pytest.mark.parametrize("folder, name", [("demo/in", "demo/in"), ("projects/bees/images", "bees/images"),
                                          ("projects/colours", "colours")])
def test_the_title_names_the_dataset_not_a_generic_folder(tmp_path, folder, name):
    """The demo's report was titled "in", the name of `demo/in`."""
    from classify.remembered import RunInputs
    from classify.report.build import dataset_name

    inputs = RunInputs(out=tmp_path / "out", run={}, values={"in_dir": str(tmp_path / folder), "dataset": None},
                       taken=[], notes=[], differs=[])
    assert dataset_name(inputs, {}) == name
