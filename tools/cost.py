"""Owning against renting: the TCO of the GPUs a load needs, against a cloud price.

    .venv/bin/python tools/cost.py --model deepseek-r1-distill-llama-70b --precision fp8 \\
        --gpus 2xh100 --requests-per-day 100000 --prompt-tokens 1000 --output-tokens 500 \\
        --staff-per-year 60000 --cloud-per-million-tokens 0.6 --cloud-per-million-output-tokens 2.2

The replicas come from tools/size.py's capacity estimate (same flags); the money from the
flags below, in one currency (--currency; the catalog's example prices are US dollars).
Prints the table per year and in total, cost per million tokens for both, the break-even
load and a sweep over utilisation. Exit codes: 0 owning is cheaper at this load, 1 the cloud
is (or the model does not fit), 2 bad input (one line per problem). --json: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inventory.catalog import GpuSpec
from rules.capacity import SECONDS_PER_DAY, CapacityPlan, Load
from rules.cost import (
    DEFAULT_GPUS_PER_HOST,
    DEFAULT_PUE,
    DEFAULT_YEARS,
    EXAMPLE_HOST_PRICE_USD,
    EXAMPLE_HOST_WATTS,
    EXAMPLE_KWH_PRICE_USD,
    HOURS_PER_YEAR,
    BreakEven,
    CloudPrice,
    Fleet,
    YearRow,
    break_even,
    totals,
)
from rules.sizing import SizingRequest
from tools.inputs import finite, shown
from tools.size import (
    EXIT_DOES_NOT_FIT,
    EXIT_FITS,
    BadInput,
    BadInputs,
    _parser,
    _request,
    capacity_plan,
    catalog_gpu,
    check_context,
    collect,
    load_from_args,
    parse,
    print_problems,
    sized,
)

SWEEP = (0.1, 0.25, 0.5, 0.75, 1.0)  # utilisation of the owned fleet's capacity
# Bounds beyond any real figure: they keep the totals finite (1e308 x 3 years is inf).
MAX_AMOUNT = 1e12  # any price, in the currency given
MAX_GPU_WATTS = 10_000
MAX_HOST_WATTS = 100_000
_CURRENCY = re.compile(r"[A-Za-z]{1,8}")  # a label: ISO 4217 codes and the like


def parser() -> argparse.ArgumentParser:
    p = _parser()
    p.prog = ".venv/bin/python tools/cost.py"
    p.description = (__doc__ or "").split("\n")[0]
    g = p.add_argument_group("cost (one currency throughout)")
    g.add_argument("--years", type=int, default=DEFAULT_YEARS, help="horizon in years (3)")
    g.add_argument("--currency", default="USD",
                   help="label of every amount (USD); other currencies need every price given")
    g.add_argument("--gpu-price", type=finite, help="price of one GPU (catalog example, USD)")
    g.add_argument("--host-price", type=finite,
                   help=f"price of one server around its GPUs (example: {EXAMPLE_HOST_PRICE_USD})")
    g.add_argument("--gpus-per-host", type=int, default=DEFAULT_GPUS_PER_HOST,
                   help=f"GPUs a server holds ({DEFAULT_GPUS_PER_HOST})")
    g.add_argument("--gpu-watts", type=finite, help="power of one GPU under load (catalog TDP)")
    g.add_argument("--host-watts", type=finite, default=EXAMPLE_HOST_WATTS,
                   help=f"power of one server besides its GPUs ({EXAMPLE_HOST_WATTS})")
    g.add_argument("--pue", type=finite, default=DEFAULT_PUE,
                   help=f"data-centre power usage effectiveness ({DEFAULT_PUE})")
    g.add_argument("--kwh-price", type=finite, help=f"price of a kWh (example: "
                                                   f"{EXAMPLE_KWH_PRICE_USD} USD)")
    g.add_argument("--staff-per-year", type=finite, default=0.0,
                   help="operations staff per year (0; the brief's example: 120,000 CNY)")
    g.add_argument("--cloud-per-gpu-hour", type=finite, help="cloud price of one GPU-hour")
    g.add_argument("--cloud-per-million-tokens", type=finite,
                   help="cloud price per million prompt tokens (and output tokens, unless "
                        "--cloud-per-million-output-tokens)")
    g.add_argument("--cloud-per-million-output-tokens", type=finite,
                   help="cloud price per million output tokens")
    return p


def _money(args: argparse.Namespace, gpu: GpuSpec) -> dict[str, float]:
    """The prices and watts, from the flags or the catalog's examples; every problem at once."""
    usd = args.currency.upper() == "USD"
    problems: list[BadInput] = []
    examples: dict[str, float | None] = {
        "--gpu-price": gpu.example_price_usd if usd else None,
        "--host-price": EXAMPLE_HOST_PRICE_USD if usd else None,
        "--kwh-price": EXAMPLE_KWH_PRICE_USD if usd else None,
    }
    given = {"--gpu-price": args.gpu_price, "--host-price": args.host_price,
             "--kwh-price": args.kwh_price}
    values: dict[str, float] = {}
    for flag, value in given.items():
        chosen = value if value is not None else examples[flag]
        if chosen is None:
            why = (f"required with --currency {shown(args.currency)} (the examples are USD)"
                   if not usd
                   else f"required: the catalog has no example price for {gpu.id}")
            problems.append(BadInput(flag, "(missing)", why))
        elif not 0 <= chosen <= MAX_AMOUNT:
            problems.append(BadInput(flag, chosen, f"zero or more, at most {MAX_AMOUNT:,.0f}"))
        else:
            values[flag] = chosen
    watts = args.gpu_watts if args.gpu_watts is not None else gpu.tdp_watts
    if watts is None:
        problems.append(BadInput("--gpu-watts", "(missing)",
                                 f"required: the catalog has no TDP for {gpu.id}"))
    checks = [("--gpu-watts", watts, MAX_GPU_WATTS), ("--host-watts", args.host_watts,
                                                        MAX_HOST_WATTS),
              ("--staff-per-year", args.staff_per_year, MAX_AMOUNT)]
    for flag, value, most in checks:
        if value is not None and not 0 <= value <= most:
            problems.append(BadInput(flag, value, f"zero or more, at most {most:,.0f}"))
    if not 1 <= args.years <= 20:
        problems.append(BadInput("--years", args.years, "1 to 20"))
    if not 1 <= args.pue <= 3:
        problems.append(BadInput("--pue", args.pue, "1.0 (no overhead) to 3"))
    if not 1 <= args.gpus_per_host <= 64:
        problems.append(BadInput("--gpus-per-host", args.gpus_per_host, "1 to 64"))
    token_price = (args.cloud_per_million_tokens is not None
                   or args.cloud_per_million_output_tokens is not None)
    if (args.cloud_per_gpu_hour is None) == (not token_price):
        problems.append(BadInput("--cloud-per-gpu-hour", args.cloud_per_gpu_hour,
                                 "give a cloud price: either it or --cloud-per-million-tokens "
                                 "(and/or --cloud-per-million-output-tokens), not both"))
    for flag, value in (("--cloud-per-gpu-hour", args.cloud_per_gpu_hour),
                        ("--cloud-per-million-tokens", args.cloud_per_million_tokens),
                        ("--cloud-per-million-output-tokens",
                         args.cloud_per_million_output_tokens)):
        if value is not None and not 0 <= value <= MAX_AMOUNT:
            problems.append(BadInput(flag, value, f"zero or more, at most {MAX_AMOUNT:,.0f}"))
    if not _CURRENCY.fullmatch(args.currency):
        problems.append(BadInput("--currency", args.currency,
                                 "a label of 1 to 8 letters, e.g. USD, CNY, EUR"))
    if problems:
        raise BadInputs(problems)
    values["--gpu-watts"] = float(watts or 0)
    return values


def fleet_for(args: argparse.Namespace, gpu: GpuSpec, capacity: CapacityPlan,
              money: dict[str, float]) -> Fleet:
    best = capacity.estimate.best
    assert best is not None
    load = capacity.estimate.load
    output = args.cloud_per_million_output_tokens
    cloud = CloudPrice(
        per_million_prompt=args.cloud_per_million_tokens,
        per_million_output=output if output is not None else args.cloud_per_million_tokens,
        per_gpu_hour=args.cloud_per_gpu_hour,
    )
    peak = load.peak_factor if load.requests_per_day else 1.0
    return Fleet(
        years=args.years, gpus_per_replica=capacity.estimate.replica.tp
        * capacity.estimate.replica.pp, gpu_price=money["--gpu-price"],
        host_price=money["--host-price"], gpus_per_host=args.gpus_per_host,
        gpu_watts=money["--gpu-watts"], host_watts=args.host_watts, pue=args.pue,
        price_per_kwh=money["--kwh-price"], staff_per_year=args.staff_per_year, cloud=cloud,
        prompt_tokens=load.prompt_tokens, output_tokens=load.output_tokens,
        replica_requests_per_day=best.requests_per_second * SECONDS_PER_DAY,
        plan_factor=peak * (1 + load.headroom),
    )


def daily_load(load: Load) -> float:
    if load.requests_per_day is not None:
        return load.requests_per_day
    return load.requests_per_second * SECONDS_PER_DAY  # a flat day at the given rate


def _row(cur: str, label: str, r: YearRow) -> str:
    return (f"  {label:<8}{r.hardware:>14,.0f}{r.power:>12,.0f}{r.staff:>12,.0f}"
            f"{r.owned:>14,.0f}{r.cloud:>14,.0f}")


def render(fleet: Fleet, per_day: float, even: BreakEven, cur: str, money_notes: list[str],
           gpu: GpuSpec) -> str:
    n = fleet.replicas(per_day)
    rows = fleet.table(per_day)
    total = totals(rows)
    owned_m, cloud_m = fleet.per_million_tokens(per_day)
    u = fleet.utilisation(per_day, n)
    hosts = fleet.hosts(n)
    lines = [
        f"Cost over {fleet.years} years, in {cur} ({per_day:,.0f} requests/day of "
        f"{fleet.prompt_tokens} + {fleet.output_tokens} tokens)",
        f"  owned: {n} replica(s) = {n * fleet.gpus_per_replica} x {gpu.id} in {hosts} "
        f"server(s); hardware {n * fleet.gpus_per_replica} x {fleet.gpu_price:,.0f} + {hosts} x "
        f"{fleet.host_price:,.0f} paid in year 1",
        f"  power: ({n * fleet.gpus_per_replica} x {fleet.gpu_watts:,.0f} W + {hosts} x "
        f"{fleet.host_watts:,.0f} W) x utilisation {u:.0%} x PUE {fleet.pue:g} x "
        f"{HOURS_PER_YEAR:,} h x {fleet.price_per_kwh:g}/kWh = {rows[0].power:,.0f} a year "
        "(idle draw not counted)",
        f"  cloud: {fleet.cloud.describe()}",
        *[f"  {note}" for note in money_notes],
        "",
        f"  {'year':<8}{'hardware':>14}{'power':>12}{'staff':>12}{'owned':>14}{'cloud':>14}",
        *[_row(cur, str(r.year), r) for r in rows],
        _row(cur, "total", total),
        "",
        f"  per million tokens (prompt + output): owned {owned_m:,.2f}, cloud {cloud_m:,.2f}",
    ]
    cheaper = "owning" if total.owned <= total.cloud else "the cloud"
    lines.append(f"  at this load {cheaper} is cheaper over {fleet.years} years "
                 f"(owned {total.owned:,.0f} vs cloud {total.cloud:,.0f}).")
    lines.append(_break_even_line(even))
    lines += ["", f"  utilisation sweep (the {n}-replica fleet, load as a share of what it "
                  f"carries):",
              f"  {'util.':>6}{'requests/day':>14}{'owned/Mtok':>12}{'cloud/Mtok':>12}  cheaper"]
    for point in sweep(fleet, n):
        lines.append(f"  {point.utilisation:>6.0%}{point.requests_per_day:>14,.0f}"
                     f"{point.owned:>12,.2f}{point.cloud:>12,.2f}  "
                     f"{'owned' if point.owned <= point.cloud else 'cloud'}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SweepPoint:
    """The n-replica fleet at one utilisation: its load and cost per million tokens."""

    utilisation: float
    requests_per_day: float
    owned: float
    cloud: float


def sweep(fleet: Fleet, n: int) -> list[SweepPoint]:
    """The utilisation sweep: the same n replicas, loaded to each share of what they carry."""
    points = []
    for share in SWEEP:
        load = share * n * (fleet.replica_requests_per_day or 0)
        points.append(SweepPoint(share, load, *_fixed_fleet_per_million(fleet, load, n)))
    return points


def _fixed_fleet_per_million(fleet: Fleet, per_day: float, n: int) -> tuple[float, float]:
    """Cost per million tokens with the fleet held at n replicas (the sweep's question:
    what the same hardware costs per token as its use changes)."""
    power = fleet.power(per_day, n)
    owned = fleet.hardware(n) + fleet.years * (power + fleet.staff_per_year)
    cloud = fleet.years * fleet.cloud_per_year(per_day, n)
    tokens = per_day * 365 * fleet.years * (fleet.prompt_tokens + fleet.output_tokens)
    return owned / tokens * 1e6, cloud / tokens * 1e6


def _break_even_line(even: BreakEven) -> str:
    if even.requests_per_day is None:
        return ("  break-even: none: at no load is owning cheaper (the cloud's price does not "
                "cover the hardware, power and staff).")
    line = (f"  break-even: owning is cheaper from {even.requests_per_day:,.0f} requests/day "
            f"({even.replicas} replica(s))")
    if even.stays_cheaper_from is not None and even.stays_cheaper_from > even.requests_per_day:
        line += (f"; a replica bought past it tips the balance back for a while: cheaper for "
                 f"good from {even.stays_cheaper_from:,.0f}")
    return line + "."


def as_json(fleet: Fleet, per_day: float, even: BreakEven, cur: str,
            capacity: CapacityPlan) -> dict[str, object]:
    n = fleet.replicas(per_day)
    rows = fleet.table(per_day)
    owned_m, cloud_m = fleet.per_million_tokens(per_day)

    def row(r: YearRow) -> dict[str, float]:
        return {"year": r.year, "hardware": r.hardware, "power": r.power, "staff": r.staff,
                "owned": r.owned, "cloud": r.cloud}

    return {
        "currency": cur, "years": fleet.years, "requests_per_day": per_day,
        "replicas": n, "gpus": n * fleet.gpus_per_replica, "hosts": fleet.hosts(n),
        "utilisation": fleet.utilisation(per_day, n),
        "per_year": [row(r) for r in rows], "total": row(totals(rows)),
        "per_million_tokens": {"owned": owned_m, "cloud": cloud_m},
        "break_even_requests_per_day": even.requests_per_day,
        "stays_cheaper_from_requests_per_day": even.stays_cheaper_from,
        "sweep": [{"utilisation": p.utilisation, "requests_per_day": p.requests_per_day,
                   "owned_per_million_tokens": p.owned, "cloud_per_million_tokens": p.cloud}
                  for p in sweep(fleet, n)],
        "assumptions": {"gpu_price": fleet.gpu_price, "host_price": fleet.host_price,
                        "gpu_watts": fleet.gpu_watts, "host_watts": fleet.host_watts,
                        "pue": fleet.pue, "kwh_price": fleet.price_per_kwh,
                        "staff_per_year": fleet.staff_per_year,
                        "cloud": fleet.cloud.describe()},
        "capacity_replica_requests_per_second": (capacity.estimate.best.requests_per_second
                                                 if capacity.estimate.best else None),
    }


class DoesNotServe(Exception):
    """The model does not fit the GPUs, or one replica cannot meet the targets: one line."""


@dataclass(frozen=True)
class CostModel:
    """Everything the cost of a load rests on, from the flags: what the table, the JSON and
    `gpufleet report`'s charts are drawn from."""

    gpu: GpuSpec
    capacity: CapacityPlan
    fleet: Fleet
    per_day: float
    even: BreakEven
    notes: list[str]


def cost_model(args: argparse.Namespace) -> CostModel:
    """The model of the flags' load; BadInput(s) for bad flags (nothing computed),
    DoesNotServe when the GPUs cannot carry it."""
    req, load = collect(lambda: _request(args), lambda: load_from_args(args, required=True))
    assert isinstance(load, Load)
    gpu, _ = collect(lambda: catalog_gpu(args), lambda: check_context(args, load))
    assert isinstance(gpu, GpuSpec) and isinstance(req, SizingRequest)
    (money,) = collect(lambda: _money(args, gpu))
    assert isinstance(money, dict)
    result = sized(req)
    if not result.fits:
        raise DoesNotServe(f"{req.model.id} at {req.precision} does not fit {args.gpus}: see "
                           "tools/size.py with the same flags.")
    capacity = capacity_plan(result, gpu, load)
    if capacity.estimate.best is None:
        raise DoesNotServe(f"one replica on {args.gpus} cannot meet the targets "
                           f"({capacity.estimate.limited_by}): see tools/size.py with the "
                           "same flags.")
    fleet = fleet_for(args, gpu, capacity, money)
    notes = []
    if args.gpu_price is None:
        notes.append(f"GPU price {fleet.gpu_price:,.0f}: the catalog's EXAMPLE; give "
                     f"--gpu-price")
    if args.host_price is None:
        notes.append(f"server price {fleet.host_price:,.0f}: an EXAMPLE; give --host-price")
    if args.kwh_price is None:
        notes.append(f"kWh price {fleet.price_per_kwh:g}: an EXAMPLE; give --kwh-price")
    if args.staff_per_year == 0:
        notes.append("operations staff: 0 (give --staff-per-year; the brief counts "
                     "120,000 CNY a year)")
    return CostModel(gpu, capacity, fleet, daily_load(load), break_even(fleet), notes)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(parser(), argv)
        model = cost_model(args)
    except (BadInput, BadInputs) as exc:
        return print_problems(exc)
    except DoesNotServe as exc:
        print(exc, file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    fleet, per_day, cur = model.fleet, model.per_day, args.currency
    total = totals(fleet.table(per_day))
    if args.json:
        print(json.dumps({"cost": as_json(fleet, per_day, model.even, cur, model.capacity)},
                         indent=2))
    else:
        print(render(fleet, per_day, model.even, cur, model.notes, model.gpu))
    return EXIT_FITS if total.owned <= total.cloud else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
