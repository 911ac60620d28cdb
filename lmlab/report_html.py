"""`report.html` of a `lmlab reproduce` folder: one self-contained page that opens from disk in any browser.

Everything the page shows is inside it: figures are embedded as `data:` URIs, styles and the few lines of
script (sorting the claims table by a column, filtering it by track and verdict) are inline, and nothing is
fetched from a server or the network. Links to each run's `config.yaml` are relative, so they open while the
page sits beside the run folders. The page is written from the folder's files alone (claims.json,
reproduce.json and the figures the rows name), so `write_html(folder)` can rewrite it at any time.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Optional

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
        ".gif": "image/gif"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f4f4f4}th.sort{cursor:pointer;user-select:none}
th.sort:after{content:" \\2195";color:#aaa}tr.hidden{display:none}
.v-reproduced{background:#d9f0d3}.v-not-reproduced{background:#f8d0cc}.v-inconclusive{background:#fde9c4}
img.fig{max-width:100%;border:1px solid #eee;margin:.3em 0}.figs{display:flex;flex-wrap:wrap;gap:8px}
.figs img{max-width:560px}.rule{font-family:ui-monospace,monospace;font-size:.8em;background:#fafafa;
padding:.4em;border-left:3px solid #ccc;white-space:pre-wrap}.filters{margin:.5em 0}.filters label{margin-right:1em}
.summary{font-weight:bold}pre.sample{white-space:pre-wrap;font-size:.8em;background:#f7f7f7;padding:.4em;margin:.2em 0}
"""

JS = """
function sortTable(th){var table=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th);
var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';var body=table.tBodies[0];
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=a.cells[i].dataset.key||a.cells[i].textContent,
y=b.cells[i].dataset.key||b.cells[i].textContent,nx=parseFloat(x),ny=parseFloat(y);
var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});}
function filterClaims(){var t=document.getElementById('f-track').value,v=document.getElementById('f-verdict').value,n=0;
document.querySelectorAll('#claims tbody tr').forEach(function(r){var ok=(!t||r.dataset.track===t)&&(!v||r.dataset.verdict===v);
r.classList.toggle('hidden',!ok);if(ok)n++;});document.getElementById('n-shown').textContent=n;}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x))


def data_uri(path: Path) -> Optional[str]:
    """The file as a data: URI, or None when it is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _num(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(f) else f"{f:.4g}"


def _ms(pair) -> tuple[str, str]:
    """(text, sort key) of a [mean, std] pair."""
    try:
        m, s = float(pair[0]), float(pair[1])
    except (TypeError, ValueError, IndexError):
        return "—", ""
    if not math.isfinite(m):
        return "—", ""
    return (f"{m:.4g} ± {s:.2g}" if math.isfinite(s) else f"{m:.4g}"), repr(m)


def _vclass(v: str) -> str:
    return "v-" + (v or "").replace(" ", "-")


def _img(out: Path, rel: str, alt: str, cls: str = "fig") -> str:
    uri = data_uri(out / rel)
    if uri is None:
        return f"<p>missing figure: {esc(rel)}</p>"
    return f'<img class="{cls}" alt="{esc(alt)}" title="{esc(rel)}" src="{uri}">'


def _samples(samples: dict) -> str:
    if not samples:
        return ""
    parts = ["<h3>Sample outputs (first seed)</h3>"]
    for arm, xs in samples.items():
        parts.append(f"<p><b>{esc(arm)}</b></p>")
        for x in xs:
            if isinstance(x, dict):
                parts.append("<pre class='sample'>" + "\n".join(f"{esc(k)}: {esc(v)}" for k, v in x.items()) + "</pre>")
            else:
                parts.append(f"<pre class='sample'>{esc(x)}</pre>")
    return "\n".join(parts)


def _section(out: Path, r: dict) -> str:
    from lmlab.forest import effect_text, row_effect

    name = r["name"]
    seeds = sorted({s for vals in (r.get("per_seed") or {}).values() for s in vals}, key=lambda s: (len(s), s))
    per_seed = ""
    if seeds:
        head = "".join(f"<th>seed {esc(s)}</th>" for s in seeds)
        body = "".join(f"<tr><td>{esc(a)}</td>" + "".join(f"<td>{_num(vals.get(s))}</td>" for s in seeds) + "</tr>"
                       for a, vals in r["per_seed"].items())
        per_seed = (f"<table class='perseed'><thead><tr><th>arm: {esc(r['metric'])}</th>{head}</tr></thead>"
                    f"<tbody>{body}</tbody></table>")
    configs = r.get("configs") or {}
    cfg = ""
    if configs:
        cfg = "<p>Configs: " + "; ".join(
            f"{esc(a)}: " + ", ".join(f'<a href="{esc(p)}">seed {esc(Path(p).parent.name.replace("seed_", ""))}</a>'
                                      for p in ps) for a, ps in configs.items()) + "</p>"
    counts = r.get("runs") or {}
    figs = "".join(_img(out, p, Path(p).stem) for p in r.get("figures") or [])
    return f"""
<section id="exp-{esc(name)}" class="experiment">
<h2><code>{esc(name)}</code> — {esc(r.get('claim'))}</h2>
<p><i>{esc(r.get('paper'))}.</i> {esc(r.get('description', ''))}</p>
<p class="{_vclass(r.get('verdict'))}"><b>Verdict: {esc(r.get('verdict'))}</b>
 ({esc(r.get('technique_arm'))} vs {esc(r.get('baseline_arm'))} on {esc(r.get('metric'))},
 {'lower' if r.get('direction') == 'lower' else 'higher'} is better; effect, 95% CI: {esc(effect_text(row_effect(r)))})</p>
<div class="rule">Rule: {esc(r.get('rule'))}</div>
<p>Runs: {counts.get('ran', 0)} run now, {counts.get('reused', 0)} reused, {counts.get('stale', 0)} stale reruns;
 {esc(r.get("seconds", "?"))} s for the runs run now and the figures.</p>
{per_seed}
{cfg}
{_samples(r.get('samples') or {})}
<div class="figs">{figs}</div>
</section>"""


def render(out: Path, rows: list[dict], meta: Optional[dict] = None, title: str = "lmlab reproduce") -> str:
    """The page's HTML for the report folder `out` and its claims rows."""
    from lmlab.forest import effect_text, row_effect

    out = Path(out)
    meta = meta or {}
    tracks = sorted({r.get("track") or "—" for r in rows})
    verdicts = sorted({r.get("verdict") or "—" for r in rows})
    trs = []
    for r in rows:
        b, bk = _ms(r.get("baseline"))
        t, tk = _ms(r.get("technique"))
        e = row_effect(r)
        rel = (e.get("relative") or {}).get("gain")
        ekey = repr(rel) if rel is not None and math.isfinite(rel) else ""
        arrow = "↓" if r.get("direction") == "lower" else "↑"
        trs.append(
            f'<tr class="claim" data-track="{esc(r.get("track") or "—")}" data-verdict="{esc(r.get("verdict"))}">'
            f'<td><a href="#exp-{esc(r["name"])}"><code>{esc(r["name"])}</code></a></td>'
            f'<td>{esc(r.get("track") or "—")}</td><td>{esc(r.get("paper"))}</td><td>{esc(r.get("claim"))}</td>'
            f'<td>{esc(r.get("metric"))} {arrow}</td>'
            f'<td data-key="{bk}">{esc(r.get("baseline_arm"))}: {esc(b)}</td>'
            f'<td data-key="{tk}">{esc(r.get("technique_arm"))}: {esc(t)}</td>'
            f'<td data-key="{ekey}">{esc(effect_text(e))}</td><td>{esc(r.get("seeds"))}</td>'
            f'<td class="{_vclass(r.get("verdict"))}"><b>{esc(r.get("verdict"))}</b></td></tr>')
    cols = ["experiment", "track", "paper", "claim", "metric", "baseline (mean ± std)", "technique (mean ± std)",
            "effect [95% CI] (% of baseline)", "seeds", "verdict"]
    head = "".join(f'<th class="sort" onclick="sortTable(this)">{esc(c)}</th>' for c in cols)
    opts = lambda xs: "".join(f'<option value="{esc(x)}">{esc(x)}</option>' for x in xs)  # noqa: E731
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("verdict")] = counts.get(r.get("verdict"), 0) + 1
    summary = f"{len(rows)} claims: " + ", ".join(f"{n} {esc(v)}" for v, n in sorted(counts.items()))
    forest = _img(out, "forest.png", "forest plot of every claim") if (out / "forest.png").exists() else ""
    when = esc(meta.get("time", "")[:16])
    prov = (f"scale {esc(meta.get('scale', '?'))}, code {esc(str(meta.get('code_version', '?'))[:12])}"
            f"{', ' + when if when else ''}; {esc(meta.get('executor', ''))}")
    sections = "\n".join(_section(out, r) for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p>{prov}. Verdicts are computed from the measured numbers; each rule is printed in its section.</p>
<p class="summary">{summary}</p>
<h2>Every claim at a glance</h2>
{forest}
<h2>Claims</h2>
<div class="filters"><label>track <select id="f-track" onchange="filterClaims()"><option value="">all</option>
{opts(tracks)}</select></label><label>verdict <select id="f-verdict" onchange="filterClaims()"><option value="">all</option>
{opts(verdicts)}</select></label> <span id="n-shown">{len(rows)}</span> shown; click a column to sort.</div>
<table id="claims"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(trs)}
</tbody></table>
{sections}
<h2>Run metadata</h2><pre class="rule">{esc(json.dumps(meta, indent=2))}</pre>
<script>{JS}</script>
</body></html>
"""


def write_html(out: Path) -> Path:
    """Write `out/report.html` from `out/claims.json` (+ reproduce.json and the figures it names)."""
    from lmlab.io import atomic_write_text

    out = Path(out)
    p = out / "claims.json"
    if not p.exists():
        raise FileNotFoundError(f"{out}: no claims.json (not a `lmlab reproduce` output folder)")
    rows = json.loads(p.read_text())
    meta_p = out / "reproduce.json"
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    page = render(out, rows, meta)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
