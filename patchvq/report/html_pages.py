"""The report's HTML: every string shown goes through `html.escape`; one minimal script counts
the images that loaded (into `<body data-images>`), nothing else runs (a CSP allows only it)."""

from __future__ import annotations

import base64
import hashlib
from html import escape

from patchvq.report.panels import LEVEL_COLOURS

SCRIPT = ("(function(){function c(){var a=document.images,n=0,f=0;for(var i=0;i<a.length;i++){"
          "if(a[i].complete){if(a[i].naturalWidth>0)n++;else f++;}}"
          "document.body.setAttribute('data-images',n+'/'+a.length+' failed '+f);}"
          "document.addEventListener('load',c,true);document.addEventListener('error',c,true);"
          "window.addEventListener('load',c);})();")
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table.m{border-collapse:collapse}table.m td{padding:2px 10px;border-bottom:1px solid #ddd}
table.m td.v{text-align:right;font-variant-numeric:tabular-nums}
.figs img{margin:4px;border:1px solid #ddd;background:white}
.card{background:white;border:1px solid #ddd;margin:10px 0;padding:8px;border-radius:4px}
.card.defective{border-left:6px solid #c0392b}.card.good{border-left:6px solid #27ae60}
.path{font-family:monospace;font-size:.85em;word-break:break-all;color:#555}
.titles{display:flex;font-size:.8em;color:#555}.titles span{text-align:center;flex:none}
.nav a,.nav b{margin-right:.6em}.key span{display:inline-block;width:1em;height:1em;vertical-align:middle}
"""

METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO (FPR ≤ 0.3)"),
           ("ap", "average precision"), ("f1_max", "F1-max (oracle threshold)"), ("threshold", "threshold"),
           ("precision", "precision at threshold"), ("recall", "recall at threshold"),
           ("ms_per_image", "ms per image"))


def page_file(number: int) -> str:
    return "index.html" if number == 1 else f"page-{number:03d}.html"


def _value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _nav(number: int, pages: int) -> str:
    if pages == 1:
        return ""
    links = []
    for n in range(1, pages + 1):
        links.append(f"<b>{n}</b>" if n == number else f'<a href="{escape(page_file(n))}">{n}</a>')
    return f'<p class="nav">pages (worst-scored first): {"".join(links)}</p>'


def _summary(metrics: dict, extra: dict) -> str:
    rows = [f"<tr><td>{escape(label)}</td><td class=v>{escape(_value(metrics.get(key)))}</td></tr>"
            for key, label in METRICS if key in metrics]
    c = metrics.get("confusion") or {}
    if c:
        rows.append("<tr><td>images (good / defective)</td><td class=v>"
                    f"{escape(str(metrics.get('images')))} ({escape(str(metrics.get('good')))} / "
                    f"{escape(str(metrics.get('defective')))})</td></tr>")
    for key, value in extra.items():
        rows.append(f"<tr><td>{escape(str(key))}</td><td class=v>{escape(_value(value))}</td></tr>")
    table = f'<table class="m">{"".join(rows)}</table>'
    if c:
        g = {k: escape(str(c.get(k))) for k in ("tp", "fp", "fn", "tn")}
        table += ("<h2>Confusion at the threshold</h2><table class=\"m\"><tr><td></td><td>called defective</td>"
                  "<td>called good</td></tr>"
                  f"<tr><td>defective</td><td class=v>TP {g['tp']}</td><td class=v>FN {g['fn']}</td></tr>"
                  f"<tr><td>good</td><td class=v>FP {g['fp']}</td><td class=v>TN {g['tn']}</td></tr></table>")
    return table


def _card(r: dict, titles: list[str], side: int) -> str:
    kind = "defective" if r["label"] else "good"
    truth = kind + (f" ({r['defect']})" if r["defect"] and r["label"] else "")
    head = (f"#{r['rank']} · score {r['score']:.4g} · called <b>{escape(r['verdict'])}</b> · truth "
            f"{escape(truth)}")
    spans = "".join(f'<span style="width:{side + 4}px">{escape(t)}</span>' for t in titles)
    return (f'<div class="card {escape(r["verdict"])}"><div>{head}</div>'
            f'<div class="path">{escape(r["path"])}</div>'
            f'<img loading="lazy" src="{escape(r["file"])}" width="{int(r["width"])}" height="{int(r["height"])}"'
            f' alt="{escape(r["path"])}"><div class="titles">{spans}</div></div>')


def page(*, title, metrics, extra, figures, rows, titles, number, pages, side, heat_range, levels) -> str:
    csp = f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">',
        f"<title>{escape(str(title))} – patchvq report</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(str(title))}</h1>",
    ]
    if number == 1:
        parts.append(_summary(metrics, extra))
        if figures:
            imgs = "".join(f'<img src="{escape(name)}" alt="{escape(alt)}" width=500 height=360>'
                           for name, alt, _ in figures)
            parts.append(f'<h2>Curves</h2><div class="figs">{imgs}</div>')
    else:
        parts.append('<p><a href="index.html">summary</a></p>')
    lo, hi = heat_range
    key = f"<p>Heat maps coloured from {lo:.4g} (dark) to {hi:.4g} (bright; 1.5 × threshold). "
    key += "Cyan: ground-truth outline."
    if levels:
        key += " Code levels: " + " ".join(
            f'<span style="background:rgb({",".join(map(str, LEVEL_COLOURS[i]))})"></span> {i}'
            + (" (finest)" if i == 0 else " (coarsest)" if i == levels - 1 else "") for i in range(levels))
    parts.append(f'<h2>Images, worst-scored first</h2><div class="key">{key}</p></div>')
    parts.append(_nav(number, pages))
    parts.extend(_card(r, titles, side) for r in rows)
    parts.append(_nav(number, pages))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)
