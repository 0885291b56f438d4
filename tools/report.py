#!/usr/bin/env python3
"""Fleet report: one self-contained HTML page of what the controller records.

    .venv/bin/python tools/report.py --fleet inventory/sim.toml        # or: gpufleet report
    .venv/bin/python tools/report.py --fleet inventory/sim.toml --out report.html \\
        --gpus 1xa100-40gb --requests-per-day 100000 --cloud-per-million-tokens 0.6

Offline, no server: it reads only the controller's files (fleet-state/<fleet>/: the host
manifests the deploy writes, audit.json from `gpufleet audit`, smoke.json from `gpufleet
smoke`, canary.json from `gpufleet canary status`) and, with a load and a cloud price (the
flags of tools/cost.py), the capacity estimate and the cost model. It shows hosts x pin set x
drift x serving with each replica's last completion, the canary's share and verdict, and
charts of the capacity estimate, the cost against the cloud with its break-even, and the
utilisation sweep. The charts are SVG drawn by matplotlib inside the page: no JavaScript,
nothing fetched. Default output: fleet-state/<fleet>/report.html. Exit 0 written, 2 bad input
(one line per problem, nothing written).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inventory.controller_files import write_atomically
from inventory.fleet import Fleet, FleetError, HostSpec, load_fleet, unedited_example_problem
from rules.capacity import at_batch
from rules.cost import totals
from rules.fleet_checks import fleet_problems
from tools.cost import CostModel, DoesNotServe, cost_model, sweep
from tools.cost import parser as cost_parser
from tools.inputs import EXIT_BAD_INPUT, printable
from tools.size import BadInput, BadInputs, parse, print_problems

MAX_CAPACITY_POINTS = 256  # batch sizes drawn in the capacity chart
NOT_REPORT_FLAGS = {"json": "--json", "list_models": "--list-models", "list_gpus": "--list-gpus"}


class ReportError(Exception):
    """One line: a controller file that cannot be read."""


@dataclass(frozen=True)
class Replica:
    endpoint: str
    url: str
    ok: bool
    problem: str | None
    completion_ms: float | None
    e2e_p50_ms: float | None


@dataclass
class HostRow:
    name: str
    group: str
    role: str
    pin_set: str  # what the fleet file asks for now
    recorded_pin_set: str | None  # what the host's manifest says it was made with
    converged_at: str | None
    drift: str
    drift_ok: bool | None  # None: not audited
    replicas: list[Replica] = field(default_factory=list)
    serving: str = ""
    serving_ok: bool | None = None


def read_record(path: Path) -> dict | None:
    """A controller JSON file; None when it is absent (that command never ran)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot be read as JSON ({exc}): run the command that "
                          "writes it again, or remove it") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a JSON object: run the command that writes it again")
    return data


def _replicas(smoke: dict | None, name: str) -> list[Replica]:
    found = []
    for item in (smoke or {}).get("endpoints", []):
        label = str(item.get("endpoint", ""))
        if label == name or label.startswith(f"{name} ("):
            found.append(Replica(label, str(item.get("url", "")), bool(item.get("ok")),
                                 item.get("problem"), item.get("completion_ms"),
                                 item.get("e2e_p50_ms")))
    return found


def host_rows(fleet: Fleet) -> tuple[list[HostRow], dict | None, dict | None]:
    """Each host of the fleet file with its manifest, last audit and last smoke test; and
    the audit and smoke records themselves (None: never run)."""
    state_dir = fleet.hosts[0].state_dir
    audit = read_record(state_dir / "audit.json")
    smoke = read_record(state_dir / "smoke.json")
    rows = []
    for spec in fleet.hosts:
        manifest = read_record(state_dir / f"{spec.name}.json")
        recorded = manifest.get("pin_set") if manifest else None
        row = HostRow(spec.name, spec.group, spec.settings.role, spec.pin_set_name,
                      recorded, manifest.get("written_at") if manifest else None,
                      *_drift(spec, manifest, audit))
        row.replicas = _replicas(smoke, spec.name)
        row.serving, row.serving_ok = _serving(spec, row.replicas, smoke)
        rows.append(row)
    return rows, audit, smoke


def _drift(spec: HostSpec, manifest: dict | None, audit: dict | None) -> tuple[str, bool | None]:
    if manifest is None:
        return "never converged (no manifest in fleet-state)", False
    if manifest.get("pin_set") != spec.pin_set_name:
        return (f"behind: made with {manifest.get('pin_set')}, the fleet file asks for "
                f"{spec.pin_set_name} (gpufleet rollout)"), False
    if audit is None:
        return "not audited (gpufleet audit)", None
    if spec.name not in audit:
        return "not in the last audit", None
    found = audit[spec.name]
    if not found:
        return "no drift", True
    return "drifted: " + "; ".join(f"{d.get('area')}: {d.get('what')}" for d in found), False


def _serving(spec: HostSpec, replicas: list[Replica], smoke: dict | None
             ) -> tuple[str, bool | None]:
    if smoke is None:
        return "not checked (gpufleet smoke)", None
    if not replicas:
        serves = spec.settings.role == "gpu" and spec.settings.inference.enabled
        return ("not in the last smoke test" if serves else "serves nothing"), None
    answered = sum(r.ok for r in replicas)
    what = "gateway" if spec.settings.role == "monitor" else "replica(s)"
    if answered == len(replicas):
        return f"serving: {answered}/{len(replicas)} {what} answered", True
    return f"NOT serving: {answered}/{len(replicas)} {what} answered", False


def _svg(figure: object) -> str:
    """A matplotlib figure as inline SVG: text kept as text (the numbers are in the page),
    no date, fixed ids (the same data gives the same page)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gpufleet"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None},  # type: ignore[attr-defined]
                       bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def charts(model: CostModel, currency: str) -> list[tuple[str, str]]:
    """(title, SVG) of the capacity estimate, the cost against the cloud, the sweep."""
    from matplotlib.figure import Figure

    out = []
    estimate, plan = model.capacity.estimate, model.capacity
    best = estimate.best
    assert best is not None  # cost_model refuses a replica that meets no target
    top = max(1, min(estimate.kv_concurrency, estimate.batch_limit, MAX_CAPACITY_POINTS))
    points = [at_batch(estimate.replica, estimate.load, b) for b in range(1, top + 1)]
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.plot([p.batch for p in points], [p.requests_per_second for p in points],
            color="tab:blue", label="requests/s per replica")
    ax.set_xlabel("concurrent sequences (batch)")
    ax.set_ylabel("requests/s per replica", color="tab:blue")
    other = ax.twinx()
    other.plot([p.batch for p in points], [p.user_tokens_per_second for p in points],
               color="tab:orange", label="tokens/s each user sees")
    other.set_ylabel("tokens/s each user sees", color="tab:orange")
    ax.axvline(best.batch, color="grey", linestyle="--")
    ax.annotate(f"chosen batch {best.batch}: {best.requests_per_second:.2f} req/s",
                (best.batch, best.requests_per_second), textcoords="offset points",
                xytext=(-6, -14), fontsize=8, ha="right")
    ax.set_title(f"{plan.replicas} replica(s) carry {plan.capacity_rate:.2f} req/s; "
                 f"planned {plan.planned_rate:.2f} req/s", fontsize=10)
    out.append(("Capacity estimate (one replica by batch size)", _svg(fig)))

    fleet, even = model.fleet, model.even
    marks = [model.per_day, *([even.requests_per_day] if even.requests_per_day else [])]
    right = max(marks) * 2
    loads = [right * (i + 1) / 80 for i in range(80)]
    owned = [totals(fleet.table(d)).owned for d in loads]
    cloud = [totals(fleet.table(d)).cloud for d in loads]
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.plot(loads, owned, label="owned (hardware, power, staff)", color="tab:green")
    ax.plot(loads, cloud, label="cloud", color="tab:red")
    if even.requests_per_day:
        ax.axvline(even.requests_per_day, color="grey", linestyle="--")
        ax.annotate(f"break-even {even.requests_per_day:,.0f}/day",
                    (even.requests_per_day, 0), textcoords="offset points", xytext=(4, 8),
                    fontsize=8)
    ax.axvline(model.per_day, color="black", linestyle=":")
    ax.annotate(f"this load {model.per_day:,.0f}/day", (model.per_day, max(cloud) * 0.9),
                textcoords="offset points", xytext=(4, 0), fontsize=8)
    ax.set_xlabel("requests per day")
    ax.set_ylabel(f"total over {fleet.years} years ({currency})")
    ax.legend(fontsize=8, loc="upper left")
    out.append((f"Cost against the cloud over {fleet.years} years", _svg(fig)))

    n = fleet.replicas(model.per_day)
    swept = sweep(fleet, n)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    shares = [p.utilisation * 100 for p in swept]
    ax.plot(shares, [p.owned for p in swept], marker="o", color="tab:green", label="owned")
    ax.plot(shares, [p.cloud for p in swept], marker="o", color="tab:red", label="cloud")
    ax.set_xlabel(f"utilisation of the {n}-replica fleet (%)")
    ax.set_ylabel(f"{currency} per million tokens")
    ax.legend(fontsize=8)
    out.append(("Utilisation sweep", _svg(fig)))
    return out


def _cell(text: object) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def _status(text: object, ok: bool | None) -> str:
    """A coloured cell: True good, False bad, None not known (its command never ran)."""
    css = {True: "ok", False: "bad", None: "unknown"}[ok]
    return f'<td class="{css}">{html.escape(str(text))}</td>'


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if isinstance(value, (int, float)) else "n/a"


def _variant_row(name: str, figures: dict) -> str:
    ttft, rate = figures.get("ttft_p99_s"), figures.get("tokens_per_second")
    cells = [name, str(figures.get("requests", 0)),
             f"{float(figures.get('error_rate') or 0) * 100:.2f} %",
             _ms(float(ttft) * 1000) if ttft is not None else "n/a",
             f"{float(rate):.1f}" if rate is not None else "n/a"]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def render_html(fleet: Fleet, rows: list[HostRow], smoke: dict | None, audit: dict | None,
                canary: dict | None, drawn: list[tuple[str, str]], chart_note: str,
                model: CostModel | None, currency: str, now: str) -> str:
    e = html.escape
    body = [f"<h1>gpufleet report: {e(fleet.name)}</h1>",
            f"<p class=\"meta\">Fleet file {e(str(fleet.source))}; written {e(now)}; "
            f"last smoke test {e(str((smoke or {}).get('written_at', 'never')))}; "
            f"audit {'recorded' if audit is not None else 'never run'}.</p>",
            "<h2>Hosts</h2>",
            "<table><tr><th>host</th><th>group</th><th>role</th><th>pin set</th>"
            "<th>drift</th><th>serving</th><th>replica: last completion</th></tr>"]
    for row in rows:
        pins = row.pin_set if row.recorded_pin_set in (None, row.pin_set) else \
            f"{row.recorded_pin_set} (fleet file: {row.pin_set})"
        replicas = "<br>".join(
            f"{e(r.url)}: " + (f"{_ms(r.completion_ms)} (P50 {_ms(r.e2e_p50_ms)})" if r.ok
                               else f"FAILED: {e(str(r.problem))}")
            for r in row.replicas) or "-"
        pins_ok = row.recorded_pin_set == row.pin_set
        body.append(f"<tr>{_cell(row.name)}{_cell(row.group)}{_cell(row.role)}"
                    f"{_status(pins, pins_ok)}"
                    f"{_status(row.drift, row.drift_ok)}{_status(row.serving, row.serving_ok)}"
                    f"<td>{replicas}</td></tr>")
    body.append("</table>")
    body.append("<h2>Canary</h2>")
    if canary is None:
        body.append("<p>No canary status recorded: <code>gpufleet canary status</code> "
                    "writes it.</p>")
    else:
        verdict = str(canary.get("verdict", "?"))
        body.append(
            f"<p>Phase <b>{e(str(canary.get('phase')))}</b>: the canary gets "
            f"<b>{e(str(canary.get('share_percent')))} %</b> of the requests for "
            f"{e(str(canary.get('model')))}. Verdict: <b class=\"verdict\">"
            f"{e(verdict.upper())}</b> ({e(str(canary.get('written_at')))}).</p><ul>"
            + "".join(f"<li>{e(str(r))}</li>" for r in canary.get("reasons", []))
            + "</ul><table><tr><th>variant</th><th>requests</th><th>error rate</th>"
              "<th>TTFT P99</th><th>tokens/s</th></tr>"
            + "".join(_variant_row(name, canary.get(name) or {}) for name in ("stable", "canary"))
            + "</table>")
    body.append("<h2>Capacity and cost</h2>")
    if model is not None:
        plan, even = model.capacity, model.even
        body.append(
            f"<p>{plan.replicas} replica(s) ({plan.gpus} x {e(model.gpu.id)}) carry "
            f"{plan.capacity_rate:.2f} requests/s for a planned {plan.planned_rate:.2f}; "
            f"load {model.per_day:,.0f} requests/day; break-even "
            + (f"{even.requests_per_day:,.0f} requests/day" if even.requests_per_day
               else "none (the cloud stays cheaper)")
            + f" ({e(currency)}).</p>"
            + "".join(f"<p class=\"meta\">{e(note)}</p>" for note in model.notes))
    if chart_note:
        body.append(f"<p>{e(chart_note)}</p>")
    body.append('<div class="charts">' + "".join(
        f"<figure><figcaption>{e(title)}</figcaption>{svg}</figure>" for title, svg in drawn)
        + "</div>")
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}"
             "th{background:#eee}.ok{background:#dff3df}.bad{background:#f8d7d7}"
             ".unknown{background:#f3f0d8}.meta{color:#555;font-size:90%}"
             ".charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 480px;"
             "max-width:640px}figcaption{font-weight:bold}svg{max-width:100%;height:auto}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>gpufleet report: {e(fleet.name)}</title><style>{style}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def parser() -> argparse.ArgumentParser:
    p = cost_parser()
    p.prog = "gpufleet report"
    p.description = (__doc__ or "").split("\n")[0]
    p.add_argument("--fleet", type=Path, default=None,
                   help="fleet file (default: $GPUFLEET_FLEET, else inventory/fleet.toml)")
    p.add_argument("--out", type=Path, default=None,
                   help="the HTML file (default: fleet-state/<fleet>/report.html)")
    for action in p._actions:  # the sizing tool's own outputs: not the report's
        if action.dest in NOT_REPORT_FLAGS:
            action.help = argparse.SUPPRESS
    return p


def _wants_charts(args: argparse.Namespace) -> bool:
    return args.requests_per_day is not None or args.requests_per_second is not None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(parser(), argv)
    except (BadInput, BadInputs) as exc:
        return print_problems(exc)
    for dest, flag in NOT_REPORT_FLAGS.items():
        if getattr(args, dest):
            print(f"report: {flag}: not a report flag (it belongs to gpufleet size / cost)",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    path = args.fleet or Path(os.environ.get("GPUFLEET_FLEET") or "inventory/fleet.toml")
    try:
        fleet = load_fleet(path, checks=fleet_problems)
        example = unedited_example_problem(fleet)
        if example:  # a page of hosts that cannot exist would only mislead
            raise ReportError(example)
        rows, audit, smoke = host_rows(fleet)
        canary = read_record(fleet.hosts[0].state_dir / "canary.json")
    except FleetError as exc:
        for line in exc.lines:
            print(printable(f"report: {line}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ReportError as exc:
        print(printable(f"report: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    gpu_hosts = [s for s in fleet.hosts if s.settings.role == "gpu"]
    if args.model is None and gpu_hosts:
        args.model = gpu_hosts[0].settings.model
    if args.precision is None and gpu_hosts:
        args.precision = gpu_hosts[0].settings.precision
    model: CostModel | None = None
    drawn: list[tuple[str, str]] = []
    note = ""
    if _wants_charts(args):
        try:
            model = cost_model(args)
        except (BadInput, BadInputs) as exc:
            return print_problems(exc)
        except DoesNotServe as exc:
            note = f"No charts: {exc}"
        else:
            drawn = charts(model, args.currency)
    else:
        note = ("No capacity or cost charts: give the load and a cloud price (the flags of "
                "gpufleet cost), e.g. --gpus 1xa100-40gb --requests-per-day 100000 "
                "--cloud-per-million-tokens 0.6")
    out = args.out or fleet.hosts[0].state_dir / "report.html"
    page = render_html(fleet, rows, smoke, audit, canary, drawn, note, model, args.currency,
                       time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    write_atomically(out, page)
    print(f"report: {out} ({len(rows)} host(s), {len(drawn)} chart(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
