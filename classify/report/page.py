"""The page around the sections: header, navigation, style, the check script, footer."""

from __future__ import annotations

from .markup import esc

# (id, heading) in the order the page shows them: the answer first, the settings last.
SECTIONS = [
    ("answer", "The answer"),
    ("comparison", "Comparison"),
    ("backbones", "Backbones x heads"),  # only for `make compare BACKBONES=...` runs
    ("fewshot", "Few-shot curves"),  # only for `make compare SHOTS=...` runs
    ("figures", "Figures"),
    ("gallery", "Misclassified images"),
    ("data", "The data"),
    ("embedding", "Embedding map"),
    ("audit", "Audit"),
    ("settings", "Settings"),
]

CSS = """
:root { --ink:#1d2430; --muted:#5b6575; --line:#d9dee6; --accent:#2457a6; --bad:#b3261e; --ok:#1e7b34; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink);
       background:#f5f7fa; }
header { background:#1d2a3f; color:#fff; padding:18px 28px 12px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:0; color:#c8d2e2; font-size:13px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:8px 28px; }
nav a { color:var(--accent); text-decoration:none; margin-right:16px; font-size:14px; white-space:nowrap; }
main { max-width:1180px; margin:0 auto; padding:8px 24px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px 20px 18px; margin:18px 0; }
h2 { font-size:19px; border-bottom:2px solid var(--accent); padding-bottom:4px; }
h3 { font-size:15px; margin:16px 0 6px; color:var(--muted); }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13px; }
th, td { border:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
thead th { background:#eef2f7; }
table.num td { font-variant-numeric: tabular-nums; }
table.kv th { background:#f6f8fb; font-weight:600; white-space:nowrap; }
table.kv table.kv { margin:0; }
table.compact td, table.compact th { padding:5px 10px; font-size:14px; }
table.compact tr.best-row td { background:#eef7f0; }
table.compact td { white-space:nowrap; }
table.compact td:last-child { white-space:normal; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size:12.5px; }
pre { background:#f6f8fb; padding:8px; overflow:auto; }
.headline { font-size:18px; margin:10px 0 6px; }
.headline strong { font-size:20px; }
.answer-card { border-left:5px solid var(--ok); padding:4px 0 4px 16px; margin:10px 0; }
.warnings { list-style:none; padding:0; margin:12px 0 4px; }
.warnings li { background:#fdecea; border:1px solid #f0b8b2; color:#6b1d17; padding:8px 12px; border-radius:6px;
               margin:6px 0; }
.banner { background:#fff3cd !important; border:2px solid #e0a800 !important; color:#5c4400 !important; }
.warn { color:var(--bad); }
.note { color:var(--muted); font-size:13px; }
.best { white-space:nowrap; background:var(--ok); color:#fff; border-radius:3px; padding:0 5px; font-size:11px; }
.cols { display:flex; flex-wrap:wrap; gap:24px; }
.cols > div { flex:1 1 420px; min-width:0; }
details { margin:8px 0; }
details > summary { cursor:pointer; color:var(--accent); }
figure { margin:12px 0; }
figcaption { color:var(--muted); font-size:13px; }
img.fig, img.wide { max-width:100%; height:auto; border:1px solid var(--line); }
.figs { display:flex; flex-wrap:wrap; gap:8px 24px; align-items:flex-start; }
.figs figure { flex:1 1 420px; min-width:0; }
.figs figure.full { flex-basis:100%; }
.figs figure:not(.full) img.fig { max-height:420px; width:auto; }
.figs img.fig.sheet { max-height:900px !important; }
.tw { max-width:100%; overflow-x:auto; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:6px; font-size:12.5px; break-inside:avoid; }
.card ul { list-style:none; margin:4px 0 0; padding:0; }
.card li.bad { color:var(--bad); font-weight:600; }
.card li.ok { color:var(--ok); }
img.thumb { width:96px; height:96px; image-rendering:auto; display:block; border:1px solid var(--line); }
img.thumb.small { width:56px; height:56px; }
.path { color:var(--muted); font-size:11.5px; overflow-wrap:anywhere; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; margin:10px 0; }
.tile { border:1px solid var(--line); border-radius:6px; padding:6px 12px; min-width:110px; max-width:260px;
        background:#f9fbfd; }
.tile .v { font-size:20px; font-weight:700; }
.tile .k { color:var(--muted); font-size:12px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:12px; }
@media print {
  body { background:#fff; font-size:11pt; }
  nav { display:none; }
  header { background:none; color:#000; padding:0; }
  header p { color:#333; }
  main { max-width:none; padding:0; }
  section { border:none; padding:0; margin:0 0 14pt; break-before:auto; }
  h2 { break-after:avoid; }
  figure, .card, table, .banner { break-inside:avoid; }
  details::details-content { content-visibility:visible; display:block; }
  details > summary { list-style:none; font-weight:600; }
  .gallery { grid-template-columns:repeat(5, 1fr); }
  .tw { overflow:visible; }
  a { color:#000; }
}
"""

# Opens the folded blocks for printing. After load, it reports images that failed to decode on
# the console (the browser test looks for console errors), and records on the page whether the
# compact table's verdict column lies inside the window without scrolling.
SCRIPT = """
window.addEventListener('beforeprint', function () {
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
});
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) {
      broken++;
      console.error('image failed to render: ' + imgs[i].alt);
    }
  }
  var ids = [];
  document.querySelectorAll('main > section[id]').forEach(function (s) { ids.push(s.id); });
  var verdict = 'absent', th = document.querySelector('table.compact th[data-col="verdict"]');
  if (th) {
    var r = th.getBoundingClientRect(), wrap = th.closest('.tw');
    var clipped = wrap && wrap.scrollWidth > wrap.clientWidth;
    verdict = (r.width > 0 && r.left >= 0 && r.right <= window.innerWidth && !clipped) ? 'visible' : 'hidden';
  }
  document.documentElement.setAttribute('data-rendered', 'images=' + imgs.length + ' broken=' + broken +
                                        ' sections=' + ids.join(',') + ' verdict=' + verdict +
                                        ' height=' + document.documentElement.scrollHeight);
});
"""


def page(title: str, subtitle: str, bodies: dict) -> str:
    """The whole HTML page: ``bodies`` maps a section id of :data:`SECTIONS` to its HTML (None:
    the section is left out)."""
    shown = [(sid, name) for sid, name in SECTIONS if bodies.get(sid) is not None]
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in shown)
    sections = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{bodies[sid]}</section>' for sid, name in shown)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header><nav>{nav}</nav><main>{sections}</main>"
        f"<footer>made by <code>python -m classify.report</code> from OUT/run.json and the cache; "
        f"self-contained, works offline.</footer><script>{SCRIPT}</script></body></html>\n")
