"""What owning GPUs costs over a horizon against renting the same service from a cloud.

Pure arithmetic, no I/O, one currency throughout (whatever the caller's figures are in).

- Owned: the hardware is paid in year 1; every year adds power and operations staff.
  power per year = (GPUs x GPU watts + hosts x host watts) / 1000 x utilisation x PUE
                   x 8,760 h x price per kWh
  (idle draw is not modelled: at low utilisation the real bill is higher than this.)
- Cloud, priced either per million tokens (prompt and output tokens, each at its price) or
  per GPU-hour, renting the same number of GPUs as the owned fleet around the clock.
- Break-even: the smallest load (requests/day) from which owning is cheaper over the horizon.
  The owned fleet grows a replica at a time with the load, so owned cost is a staircase and
  each band of one replica count is solved on its own; a fleet with no stated capacity (the
  brief's single figure for "the hardware") is one band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOURS_PER_YEAR = 8_760
DAYS_PER_YEAR = 365
DEFAULT_YEARS = 3
DEFAULT_PUE = 1.5  # a typical air-cooled data centre (Uptime Institute surveys: 1.5-1.6)
# Examples in US dollars for when no figure is given; the report marks them as examples.
EXAMPLE_HOST_PRICE_USD = 15_000  # CPUs, memory, NVMe, NICs and chassis of one GPU server
EXAMPLE_HOST_WATTS = 800  # the server around the GPUs under load
EXAMPLE_KWH_PRICE_USD = 0.12
DEFAULT_GPUS_PER_HOST = 8


def power_per_year(gpus: int, gpu_watts: float, hosts: int, host_watts: float,
                   utilisation: float, pue: float, price_per_kwh: float) -> float:
    """The electricity bill of a year (see the module docstring)."""
    kw = (gpus * gpu_watts + hosts * host_watts) / 1000
    return kw * utilisation * pue * HOURS_PER_YEAR * price_per_kwh


@dataclass(frozen=True)
class YearRow:
    year: int
    hardware: float
    power: float
    staff: float
    cloud: float

    @property
    def owned(self) -> float:
        return self.hardware + self.power + self.staff


def tco_table(hardware: float, power: float, staff: float, cloud: float,
              years: int = DEFAULT_YEARS) -> list[YearRow]:
    """One row per year: hardware in year 1, power, staff and cloud every year."""
    return [YearRow(year, hardware if year == 1 else 0.0, power, staff, cloud)
            for year in range(1, years + 1)]


def totals(rows: list[YearRow]) -> YearRow:
    return YearRow(0, sum(r.hardware for r in rows), sum(r.power for r in rows),
                   sum(r.staff for r in rows), sum(r.cloud for r in rows))


@dataclass(frozen=True)
class CloudPrice:
    """Per million tokens (prompt, output) or per GPU-hour; exactly one kind is set."""

    per_million_prompt: float | None = None
    per_million_output: float | None = None
    per_gpu_hour: float | None = None

    def per_request(self, prompt_tokens: int, output_tokens: int) -> float:
        return ((self.per_million_prompt or 0) * prompt_tokens
                + (self.per_million_output or 0) * output_tokens) / 1e6

    def describe(self) -> str:
        if self.per_gpu_hour is not None:
            return f"{self.per_gpu_hour:,.2f} per GPU-hour, the same GPUs rented around the clock"
        return (f"{self.per_million_prompt or 0:,.2f} per million prompt tokens, "
                f"{self.per_million_output or 0:,.2f} per million output tokens")


@dataclass(frozen=True)
class Fleet:
    """How the owned fleet and the cloud bill grow with the load.

    replica_requests_per_day: what one replica carries at full use (None: the fleet is one
    block whose capacity is not in question, as in the brief). plan_factor: replicas are
    bought for load x plan_factor (peak factor x (1 + headroom)).
    """

    years: int
    gpus_per_replica: int
    gpu_price: float
    host_price: float
    gpus_per_host: int
    gpu_watts: float
    host_watts: float
    pue: float
    price_per_kwh: float
    staff_per_year: float
    cloud: CloudPrice
    prompt_tokens: int
    output_tokens: int
    replica_requests_per_day: float | None
    plan_factor: float = 1.0
    fixed_hardware: float | None = None  # the brief: one figure for all the hardware
    fixed_power_per_year: float | None = None  # the brief: one figure for the power bill

    def replicas(self, requests_per_day: float) -> int:
        if self.replica_requests_per_day is None:
            return 1
        return max(1, math.ceil(requests_per_day * self.plan_factor
                                / self.replica_requests_per_day - 1e-9))

    def hosts(self, replicas: int) -> int:
        return math.ceil(replicas * self.gpus_per_replica / self.gpus_per_host)

    def utilisation(self, requests_per_day: float, replicas: int) -> float:
        if self.replica_requests_per_day is None:
            return 1.0
        return min(1.0, requests_per_day / (replicas * self.replica_requests_per_day))

    def hardware(self, replicas: int) -> float:
        if self.fixed_hardware is not None:
            return self.fixed_hardware
        return (replicas * self.gpus_per_replica * self.gpu_price
                + self.hosts(replicas) * self.host_price)

    def power(self, requests_per_day: float, replicas: int) -> float:
        if self.fixed_power_per_year is not None:
            return self.fixed_power_per_year
        return power_per_year(replicas * self.gpus_per_replica, self.gpu_watts,
                              self.hosts(replicas), self.host_watts,
                              self.utilisation(requests_per_day, replicas), self.pue,
                              self.price_per_kwh)

    def cloud_per_year(self, requests_per_day: float, replicas: int) -> float:
        if self.cloud.per_gpu_hour is not None:
            return replicas * self.gpus_per_replica * HOURS_PER_YEAR * self.cloud.per_gpu_hour
        per_request = self.cloud.per_request(self.prompt_tokens, self.output_tokens)
        return per_request * requests_per_day * DAYS_PER_YEAR

    def table(self, requests_per_day: float) -> list[YearRow]:
        n = self.replicas(requests_per_day)
        return tco_table(self.hardware(n), self.power(requests_per_day, n),
                         self.staff_per_year, self.cloud_per_year(requests_per_day, n),
                         self.years)

    def per_million_tokens(self, requests_per_day: float) -> tuple[float, float]:
        """(owned, cloud) cost per million tokens processed (prompt + output)."""
        total = totals(self.table(requests_per_day))
        tokens = (requests_per_day * DAYS_PER_YEAR * self.years
                  * (self.prompt_tokens + self.output_tokens))
        if tokens <= 0:
            return math.inf, math.inf
        return total.owned / tokens * 1e6, total.cloud / tokens * 1e6


@dataclass(frozen=True)
class BreakEven:
    requests_per_day: float | None  # None: owning is never cheaper (within the bands looked at)
    replicas: int | None  # the owned fleet at that load
    # From this load on owning stays cheaper, as far as checked (a replica bought just past
    # the break-even can tip it back for a while); None where the check found no such point.
    stays_cheaper_from: float | None


def _difference(fleet: Fleet, load: float, n: int) -> float:
    """Cloud minus owned over the horizon at `load` requests/day on n replicas."""
    years = fleet.years
    owned = fleet.hardware(n) + years * (fleet.power(load, n) + fleet.staff_per_year)
    return years * fleet.cloud_per_year(load, n) - owned


def break_even(fleet: Fleet, max_replicas: int = 10_000) -> BreakEven:
    """The smallest requests/day at which owning costs no more than the cloud over the
    horizon, walking the bands of one replica count upwards."""
    if fleet.replica_requests_per_day is None:  # one block of hardware: one band, open-ended
        d0, d1 = _difference(fleet, 0.0, 1), _difference(fleet, 1.0, 1)
        if d0 >= 0:
            return BreakEven(0.0, 1, 0.0)
        if d1 <= d0:
            return BreakEven(None, None, None)
        load = -d0 / (d1 - d0)
        return BreakEven(load, 1, load)
    width = fleet.replica_requests_per_day / fleet.plan_factor
    found: tuple[float, int] | None = None
    stays: float | None = None
    last = max_replicas
    for n in range(1, max_replicas + 1):
        low, high = (n - 1) * width, n * width
        d_low, d_high = _difference(fleet, low, n), _difference(fleet, high, n)
        # Both costs are affine in the load within a band: its ends decide.
        if d_low >= 0 and d_high >= 0:
            start: float | None = low
        elif d_high >= 0:
            start = low + (high - low) * -d_low / (d_high - d_low)
        elif d_low >= 0:  # cheaper at the band's start only (power grows with the load)
            start = low
        else:
            start = None
        if found is None and start is not None:
            found, last = (start, n), min(max_replicas, 4 * n + 10)  # a few bands on
        if found is not None:
            if start is None or d_high < 0:
                stays = None
            elif d_low < 0 or stays is None:
                stays = start
        if n >= last:
            break
    if found is None:
        return BreakEven(None, None, None)
    return BreakEven(found[0], found[1], stays)
