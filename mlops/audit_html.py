"""The audit as one self-contained HTML page (plots inlined as PNG), linking each version's Data Docs."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ a.task }} data audit</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:3px 6px;font-size:90%;vertical-align:top}.ok{color:#070}.bad{color:#b00}
code{font-size:90%}</style></head><body>
<h1>Data audit: {{ a.task }}</h1>
<p>Generated {{ a.generated_at }}. Raw data <code>{{ a.paths.raw }}</code>,
prepared <code>{{ a.paths.prepared }}</code>.
Champion: <b>{{ ('v' ~ a.champion) if a.champion else 'none' }}</b>.
{% if a.lineage_error %}<br><span class="bad">MLflow not readable: {{ a.lineage_error }}</span>{% endif %}</p>

<h2 id="raw">Raw data versions ({{ a.raw_versions|length }})</h2>
<table><tr><th>#</th><th>version (DVC md5)</th><th>first commit</th><th>date</th><th>author</th><th>samples</th>
<th>labels</th><th>intensity</th><th>validation</th><th>runs</th><th>model versions</th></tr>
{% for v in a.raw_versions %}<tr id="v-{{ v.version }}"><td>{{ loop.index }}</td><td><code>{{ v.version }}</code><br>
<small>recorded by {{ v.recorded_by|join(', ') }}; {{ v.n_files if v.n_files is not none else '?' }} files</small></td>
<td><code>{{ v.commit[:10] }}</code><br><small>{{ v.subject }}</small></td><td>{{ v.date }}</td><td>{{ v.author }}</td>
<td>{{ v.profile.n_samples if v.profile.n_samples is defined else '?' }}</td>
<td>{% for k, n in (v.profile.labels or {}).items() %}{{ k }}: {{ n }}<br>{% endfor %}
{% for k, s in (v.profile.label_shares or {}).items() %}{{ k }}: {{ '%.4f'|format(s) if s is not none else '-' }}<br>
{% endfor %}</td>
<td>{% if v.profile.intensity and v.profile.intensity.n %}{{ v.profile.intensity.column }}<br>
mean {{ '%.4g'|format(v.profile.intensity.mean) }} &plusmn; {{ '%.3g'|format(v.profile.intensity.std) }}<br>
[{{ '%.4g'|format(v.profile.intensity.min) }}, {{ '%.4g'|format(v.profile.intensity.max) }}]{% endif %}</td>
<td>{% if v.validation %}<span class="{{ 'ok' if v.validation.success else 'bad' }}">
{{ 'passed' if v.validation.success else 'FAILED' }}</span>
({{ v.validation.failed }}/{{ v.validation.evaluated }} failed)
<br><small>{{ v.validation.source }}{% if v.validation.baseline %}; drift vs
<code>{{ v.validation.baseline[:10] }}</code>
{% endif %}</small>{% for f in v.validation.failures %}<br><small class="bad">{{ f }}</small>{% endfor %}
{% else %}not validated (files not in the cache){% endif %}
{% if v.docs_href %}<br><a href="{{ v.docs_href }}">Data Docs</a>{% endif %}</td>
<td>{% set top = (v.runs or [])|rejectattr('trial')|list %}{% for r in top %}
<code>{{ r.run_id[:8] }}</code> {{ r.name }}<br>{% endfor %}
{% set trials = (v.runs or [])|selectattr('trial')|list %}
{% if trials %}+ {{ trials|length }} trial runs{% endif %}</td>
<td>{% for m in v.model_versions or [] %}v{{ m.version }}{% if m.aliases %} ({{ m.aliases|join(', ') }}){% endif %}
{% if m.champion %} <b>champion</b>{% endif %}<br>{% endfor %}</td></tr>{% endfor %}</table>

<h2 id="changes">What changed between consecutive versions</h2>
{% for c in a.changes %}<h3><code>{{ c.from[:10] }}</code> &rarr; <code>{{ c.to[:10] }}</code></h3>
{% if c.samples %}<p>Samples: {{ c.samples.added|length }} added, {{ c.samples.removed|length }} removed,
{{ c.samples.changed|length }} changed content.
{% for k in ['added', 'removed', 'changed'] %}{% if c.samples[k] %}<br>{{ k }}: {{ c.samples[k][:10]|join(', ') }}
{% if c.samples[k]|length > 10 %}&hellip;{% endif %}{% endif %}{% endfor %}</p>{% endif %}
{% if c.files %}<p>Files: {{ c.files.added|length }} added, {{ c.files.removed|length }} removed,
{{ c.files.modified|length }} modified.{% for k in ['added', 'removed', 'modified'] %}{% if c.files[k] %}
<br>{{ k }}: {{ c.files[k][:10]|join(', ') }}{% if c.files[k]|length > 10 %}&hellip;{% endif %}{% endif %}
{% endfor %}</p>
{% endif %}{% if c.shift.intensity %}<p>Intensity ({{ c.shift.intensity.column }}): mean
{{ '%.4g'|format(c.shift.intensity.mean_before) }} &rarr; {{ '%.4g'|format(c.shift.intensity.mean_after) }}
(shift {{ '%+.2f'|format(c.shift.intensity.mean_shift_in_std) }} earlier std), spread &times;
{{ '%.2f'|format(c.shift.intensity.std_ratio) }}.{% endif %}
{% if c.shift.label_tv_distance is defined %} Label distribution: total variation distance
{{ '%.3f'|format(c.shift.label_tv_distance) }}.{% endif %}</p>
{% if c.plot %}<img alt="distribution shift" src="data:image/png;base64,{{ c.plot }}">{% endif %}
{% else %}<p>Only one version so far.</p>{% endfor %}

<h2 id="prepared">Prepared data versions ({{ a.prepared_versions|length }})</h2>
<table><tr><th>version (DVC md5)</th><th>first commit</th><th>date</th><th>author</th><th>from raw version</th>
<th>runs</th><th>model versions</th></tr>
{% for p in a.prepared_versions %}<tr><td><code>{{ p.version }}</code></td><td><code>{{ p.commit[:10] }}</code></td>
<td>{{ p.date }}</td><td>{{ p.author }}</td><td><code>{{ (p.raw_version or '?')[:10] }}</code></td>
<td>{{ (p.runs or [])|length }}</td><td>{% for m in p.model_versions or [] %}v{{ m.version }}
{% if m.champion %}<b>champion</b>{% endif %} {% endfor %}</td></tr>{% endfor %}</table>
{% if a.unlinked_runs %}<p>{{ a.unlinked_runs|length }} run(s) name data versions this history does not hold
(e.g. trained from an uncommitted dvc.lock).</p>{% endif %}

<h2 id="review">Contributed samples pending review</h2>
{% if not a.pending_review.available %}<p>{{ a.pending_review.note }}</p>
{% elif a.pending_review.samples %}<p>{{ a.pending_review.samples|length }} pending.</p><table>
<tr>{% for k in a.pending_review.samples[0].keys() %}<th>{{ k }}</th>{% endfor %}</tr>
{% for item in a.pending_review.samples %}<tr>{% for val in item.values() %}<td>{{ val }}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p>None pending. {{ a.pending_review.note }}</p>{% endif %}
</body></html>
"""


def _plot(change: dict, before: dict, after: dict) -> str | None:
    """Overlaid intensity histograms and side-by-side label shares of two versions, as base64 PNG."""
    ia, ib = before.get("intensity") or {}, after.get("intensity") or {}
    labels = change["shift"].get("labels")
    if not (ia.get("n") and ib.get("n")) and not labels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    if ia.get("n") and ib.get("n"):
        for stats, name in ((ia, change["from"][:8]), (ib, change["to"][:8])):
            counts = [c / max(stats["n"], 1) for c in stats["hist_counts"]]
            axes[0].stairs(counts, stats["hist_edges"], label=name)
        axes[0].set_title(f"{ib['column']} (share of samples)")
        axes[0].legend()
    if labels:
        keys = list(labels)
        xs = range(len(keys))
        axes[1].bar([x - 0.2 for x in xs], [labels[k]["before"] for k in keys], 0.4, label=change["from"][:8])
        axes[1].bar([x + 0.2 for x in xs], [labels[k]["after"] for k in keys], 0.4, label=change["to"][:8])
        axes[1].set_xticks(list(xs), keys, rotation=30, fontsize=8)
        axes[1].set_title("label shares")
        axes[1].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(audit: dict[str, Any], path: Path) -> None:
    from jinja2 import Environment

    by_version = {v["version"]: v for v in audit["raw_versions"]}
    for change in audit["changes"]:
        change["plot"] = _plot(change, by_version[change["from"]]["profile"], by_version[change["to"]]["profile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    for v in audit["raw_versions"]:  # links relative to the page, so the folder can be moved or served
        v["docs_href"] = os.path.relpath(Path(v["docs"]).resolve(), path.parent.resolve()) if v.get("docs") else None
    html = Environment(autoescape=True).from_string(TEMPLATE).render(a=audit)
    path.write_text(html)
