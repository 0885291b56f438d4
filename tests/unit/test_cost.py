"""The cost report (rules/cost.py, tools/cost.py): the brief's table from its own inputs,
its break-even, and the command run as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rules.cost import (
    CloudPrice,
    Fleet,
    break_even,
    power_per_year,
    tco_table,
    totals,
)

ROOT = Path(__file__).resolve().parents[2]

# The brief (../shared/seed): a 70B model, three years. Owned: hardware 500,000 CNY,
# power 36,000 a year, operations staff 120,000 a year; stated total 932,000. Cloud: 216,000
# over the three years. "When the business reaches 100,000+ requests a day, consider
# building your own."
BRIEF_HARDWARE, BRIEF_POWER, BRIEF_STAFF = 500_000, 36_000, 120_000
BRIEF_STATED_TOTAL, BRIEF_CLOUD_TOTAL, BRIEF_YEARS = 932_000, 216_000, 3


def brief_fleet(cloud: CloudPrice, prompt: int = 1000, output: int = 500) -> Fleet:
    """The brief's owned figures as one block of hardware (no capacity stated)."""
    return Fleet(
        years=BRIEF_YEARS, gpus_per_replica=1, gpu_price=0, host_price=0, gpus_per_host=8,
        gpu_watts=0, host_watts=0, pue=1, price_per_kwh=0, staff_per_year=BRIEF_STAFF,
        cloud=cloud, prompt_tokens=prompt, output_tokens=output,
        replica_requests_per_day=None, fixed_hardware=BRIEF_HARDWARE,
        fixed_power_per_year=BRIEF_POWER)


def test_the_briefs_table_from_its_own_inputs() -> None:
    rows = tco_table(BRIEF_HARDWARE, BRIEF_POWER, BRIEF_STAFF, BRIEF_CLOUD_TOTAL / BRIEF_YEARS,
                     BRIEF_YEARS)
    assert [r.owned for r in rows] == [656_000, 156_000, 156_000]
    total = totals(rows)
    assert (total.hardware, total.power, total.staff) == (500_000, 108_000, 360_000)
    assert total.cloud == BRIEF_CLOUD_TOTAL
    # The brief's inputs add up to 968,000, not the 932,000 it states: 36,000 short, which
    # is one year of power (its total counts power for two years, staff for three).
    assert total.owned == 968_000
    assert total.owned - BRIEF_STATED_TOTAL == BRIEF_POWER


def test_the_briefs_break_even() -> None:
    # The brief gives no cloud unit price. At DeepSeek's published API price for R1
    # (api-docs.deepseek.com/quick_start/pricing-details-usd: $0.55 per million input tokens
    # on a cache miss, $2.19 per million output; about 4 and 16 CNY), a request of 1,000
    # prompt + 500 output tokens costs 0.012 CNY, and the brief's owned 968,000 over three
    # years breaks even at 73,668 requests a day: the order of the brief's "100,000+".
    fleet = brief_fleet(CloudPrice(per_million_prompt=4, per_million_output=16))
    assert fleet.cloud.per_request(1000, 500) == pytest.approx(0.012)
    even = break_even(fleet)
    assert even.requests_per_day == pytest.approx(968_000 / (3 * 365 * 0.012))
    assert round(even.requests_per_day or 0) == 73_668
    assert even.stays_cheaper_from == even.requests_per_day
    # Read the other way: for owning to pay off exactly at 100,000 a day, the cloud must
    # charge 968,000 / (1,095 days x 100,000) = 0.00884 a request; the brief's 216,000 then
    # buys 22,314 requests a day: break-even = that load x 968,000 / 216,000.
    per_request = 968_000 / (3 * 365 * 100_000)
    implied = brief_fleet(CloudPrice(per_million_prompt=per_request * 1e6 / 1500,
                                     per_million_output=per_request * 1e6 / 1500))
    assert break_even(implied).requests_per_day == pytest.approx(100_000)
    assert BRIEF_CLOUD_TOTAL / (3 * 365 * per_request) == pytest.approx(22_314, abs=1)


def test_power_follows_watts_utilisation_pue_and_price() -> None:
    # 8 x 700 W + 800 W = 6.4 kW, x 50 % x 1.5 x 8,760 h x 0.12 = 5,045.76 a year.
    assert power_per_year(8, 700, 1, 800, 0.5, 1.5, 0.12) == pytest.approx(5045.76)


def scaling_fleet(cloud: CloudPrice) -> Fleet:
    return Fleet(
        years=3, gpus_per_replica=2, gpu_price=25_000, host_price=15_000, gpus_per_host=8,
        gpu_watts=700, host_watts=800, pue=1.5, price_per_kwh=0.12, staff_per_year=60_000,
        cloud=cloud, prompt_tokens=1000, output_tokens=500,
        replica_requests_per_day=400_000, plan_factor=2.5)


def test_break_even_walks_the_replica_staircase() -> None:
    fleet = scaling_fleet(CloudPrice(per_million_prompt=0.6, per_million_output=2.2))
    even = break_even(fleet)
    assert even.requests_per_day is not None and even.replicas is not None
    load = even.requests_per_day
    owned, cloud = totals(fleet.table(load * 1.001)).owned, totals(fleet.table(load * 1.001)).cloud
    assert owned <= cloud
    below = totals(fleet.table(load * 0.99))
    assert below.owned > below.cloud
    # A cloud too cheap to beat: never.
    assert break_even(scaling_fleet(CloudPrice(per_million_prompt=0.001,
                                               per_million_output=0.001))).requests_per_day \
        is None


def test_owned_cost_per_token_falls_with_utilisation() -> None:
    fleet = scaling_fleet(CloudPrice(per_gpu_hour=2.0))
    costs = [fleet.per_million_tokens(share * 400_000 / 2.5)[0] for share in (0.2, 0.5, 1.0)]
    assert costs == sorted(costs, reverse=True)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cost", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


BASE = ["--model", "deepseek-r1-distill-llama-70b", "--precision", "fp8", "--gpus", "2xh100",
        "--prompt-tokens", "1000", "--output-tokens", "500", "--staff-per-year", "60000"]


def test_cost_command_text_and_json() -> None:
    p = run(*BASE, "--requests-per-day", "100000", "--cloud-per-million-tokens", "0.6",
            "--cloud-per-million-output-tokens", "2.2")
    assert p.returncode == 1, p.stderr  # the cloud is cheaper at this load
    assert "break-even: owning is cheaper from" in p.stdout
    assert "utilisation sweep" in p.stdout and "EXAMPLE" in p.stdout
    p = run(*BASE, "--requests-per-day", "400000", "--cloud-per-million-tokens", "0.6",
            "--cloud-per-million-output-tokens", "2.2", "--json")
    assert p.returncode == 0, p.stderr
    cost = json.loads(p.stdout)["cost"]
    assert len(cost["per_year"]) == 3 and cost["total"]["owned"] < cost["total"]["cloud"]
    assert cost["break_even_requests_per_day"] < 400_000
    assert [s["utilisation"] for s in cost["sweep"]] == [0.1, 0.25, 0.5, 0.75, 1.0]


def test_cost_command_refuses_bad_input_one_line_each() -> None:
    p = run("--model", "deepseek-r1-distill-llama-70b", "--gpus", "2xh100",
            "--requests-per-day", "1000", "--currency", "CNY", "--pue", "0.5",
            "--cloud-per-gpu-hour", "3", "--cloud-per-million-tokens", "1")
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines)
    joined = "\n".join(lines)
    for needle in ("--gpu-price (missing): required with --currency CNY",
                   "--host-price (missing)", "--kwh-price (missing)", "--pue 0.5: 1.0",
                   "--cloud-per-gpu-hour 3.0: give a cloud price: either it or"):
        assert needle in joined, joined
    assert "Traceback" not in p.stderr
    p = run("--model", "deepseek-r1-distill-llama-70b", "--gpus", "2xh100")
    assert p.returncode == 2 and "--requests-per-day (missing): required" in p.stderr
