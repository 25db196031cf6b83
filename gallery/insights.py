"""Reads of shopper events for the admin dashboard and the ranking experiment (reads only).

Sessions are the anonymous ids of ``gallery.events``; a conversion is a "view product" visit. Every
figure covers the events since ``since`` (the dashboard's window), so each is one or a few indexed
queries however long the retention.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from statistics import NormalDist

from django.db.models import Count, Q
from django.db.models.functions import TruncDate

from gallery.models import ShopperEvent

Z95 = NormalDist().inv_cdf(0.975)
Kind = ShopperEvent.Kind


def _since(since: datetime) -> Q:
    return Q(at__gte=since)


def searches_per_day(*, since: datetime) -> list[tuple[date, int]]:
    """Text searches per day (UTC), oldest first."""
    rows = (
        ShopperEvent.objects.filter(_since(since), kind=Kind.SEARCH)
        .annotate(day=TruncDate("at"))
        .values("day")
        .annotate(n=Count("id"))
        .order_by("day")
    )
    return [(row["day"], row["n"]) for row in rows]


def top_queries(*, since: datetime, limit: int = 20, zero_results: bool = False) -> list[tuple[str, int]]:
    """The most frequent queries, most first; with ``zero_results`` only searches that found nothing."""
    qs = ShopperEvent.objects.filter(_since(since), kind=Kind.SEARCH).exclude(query="")
    if zero_results:
        qs = qs.filter(count=0)
    rows = qs.values("query").annotate(n=Count("id")).order_by("-n", "query")[:limit]
    return [(row["query"], row["n"]) for row in rows]


@dataclass(frozen=True)
class PositionRate:
    position: int
    clicks: int
    grids: int  # grids shown holding a tile at this place

    @property
    def rate(self) -> float:
        return self.clicks / self.grids if self.grids else 0.0


def click_through_by_position(*, since: datetime, positions: int = 25) -> list[PositionRate]:
    """Per grid place 1..``positions``: tiles clicked there / grids shown with a tile there."""
    sizes = Counter(
        dict(
            ShopperEvent.objects.filter(_since(since), kind=Kind.GRID)
            .values("count")
            .annotate(n=Count("id"))
            .values_list("count", "n")
        )
    )
    clicks = dict(
        ShopperEvent.objects.filter(_since(since), kind=Kind.CLICK, position__lte=positions)
        .values("position")
        .annotate(n=Count("id"))
        .values_list("position", "n")
    )
    out = []
    for position in range(1, positions + 1):
        grids = sum(n for size, n in sizes.items() if size is not None and size >= position)
        out.append(PositionRate(position, clicks.get(position, 0), grids))
    return out


def _converting_sessions(since: datetime, arm: str | None = None) -> dict[str, int]:
    """Session -> clicks (tile clicks and trail edits) before its first conversion, for sessions that converted."""
    base = ShopperEvent.objects.filter(_since(since)).exclude(session="")
    if arm is not None:
        base = base.filter(arm=arm)
    first: dict[str, datetime] = {}
    for session, at in base.filter(kind=Kind.CONVERT).order_by("at").values_list("session", "at"):
        first.setdefault(session, at)
    clicks: dict[str, int] = dict.fromkeys(first, 0)
    sessions = list(first)
    for start in range(0, len(sessions), 900):
        part = sessions[start : start + 900]
        rows = base.filter(session__in=part, kind__in=[Kind.CLICK, Kind.TRAIL]).values_list("session", "at")
        for session, at in rows:
            if at <= first[session]:
                clicks[session] += 1
    return clicks


def clicks_before_conversion(*, since: datetime) -> list[tuple[int, int]]:
    """(clicks before the first conversion, sessions) for the sessions that converted, fewest clicks first."""
    histogram = Counter(_converting_sessions(since).values())
    return sorted(histogram.items())


def conversions_per_100_sessions(*, since: datetime) -> list[tuple[date, int, int, float]]:
    """Per day: (day, sessions, sessions that converted, conversions per 100 sessions)."""
    per_day: dict[date, set[str]] = defaultdict(set)
    converted: dict[date, set[str]] = defaultdict(set)
    rows = (
        ShopperEvent.objects.filter(_since(since))
        .exclude(session="")
        .annotate(day=TruncDate("at"))
        .values_list("day", "session", "kind")
        .distinct()
    )
    for day, session, kind in rows:
        per_day[day].add(session)
        if kind == Kind.CONVERT:
            converted[day].add(session)
    return [
        (day, len(per_day[day]), len(converted[day]), 100 * len(converted[day]) / len(per_day[day]))
        for day in sorted(per_day)
    ]


def totals(*, since: datetime) -> dict[str, int]:
    """Events by kind and distinct sessions in the window."""
    qs = ShopperEvent.objects.filter(_since(since))
    by_kind = dict(qs.values("kind").annotate(n=Count("id")).values_list("kind", "n"))
    return {
        "sessions": qs.exclude(session="").values("session").distinct().count(),
        **{kind: by_kind.get(kind, 0) for kind in Kind.values},
    }


def session_events(*, session: str, limit: int = 200) -> list[ShopperEvent]:
    """One session's events, oldest first (the dashboard's look at a single shopper's path)."""
    return list(ShopperEvent.objects.filter(session=session).order_by("at", "id")[:limit])


# --- The ranking experiment ---------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def _wilson(successes: int, n: int) -> Interval:
    """The share ``successes / n`` with its 95 % Wilson score interval (sound for small counts and 0 or n)."""
    if n == 0:
        return Interval(0.0, 0.0, 0.0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    # Exact at the ends (rounding would put 1.0 a hair outside its own interval).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def _mean(values: list[int]) -> Interval | None:
    """The mean with its 95 % normal interval (None without values)."""
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return Interval(mean, mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = Z95 * sd / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class ArmResult:
    arm: str
    sessions: int
    converted: int
    conversion: Interval  # conversions per session (share of sessions that converted)
    clicks_to_conversion: Interval | None  # mean clicks before the first conversion, converting sessions


@dataclass(frozen=True)
class ArmComparison:
    """An arm against the first (the reference): the differences with 95 % intervals and what they say."""

    arm: str
    reference: str
    conversion_difference: Interval
    conversion_p_value: float
    clicks_difference: Interval | None

    @property
    def significant(self) -> bool:
        return self.conversion_difference.low > 0 or self.conversion_difference.high < 0

    @property
    def clicks_significant(self) -> bool:
        d = self.clicks_difference
        return d is not None and (d.low > 0 or d.high < 0)


def experiment_results(*, since: datetime, arms: list[str]) -> tuple[list[ArmResult], list[ArmComparison]]:
    """Each arm's sessions, conversions per session and clicks to conversion, with 95 % intervals, and each
    arm against the first: the difference in conversion (two-proportion z-test) and in clicks (Welch)."""
    results: list[ArmResult] = []
    clicks_of: dict[str, list[int]] = {}
    for arm in arms:
        sessions = (
            ShopperEvent.objects.filter(_since(since), arm=arm).exclude(session="").values("session").distinct().count()
        )
        clicks = list(_converting_sessions(since, arm=arm).values())
        clicks_of[arm] = clicks
        results.append(ArmResult(arm, sessions, len(clicks), _wilson(len(clicks), sessions), _mean(clicks)))
    comparisons = []
    if results:
        ref = results[0]
        for other in results[1:]:
            p1, n1, p2, n2 = ref.conversion.value, ref.sessions, other.conversion.value, other.sessions
            if n1 and n2:
                diff = p2 - p1
                se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
                pooled = (ref.converted + other.converted) / (n1 + n2)
                se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
                p_value = 2 * (1 - NormalDist().cdf(abs(diff) / se0)) if se0 else 1.0
                interval = Interval(diff, diff - Z95 * se, diff + Z95 * se)
            else:
                interval, p_value = Interval(0.0, -1.0, 1.0), 1.0
            a, b = ref.clicks_to_conversion, other.clicks_to_conversion
            clicks_diff = None
            if a is not None and b is not None and len(clicks_of[ref.arm]) > 1 and len(clicks_of[other.arm]) > 1:
                se = math.sqrt(((a.high - a.value) / Z95) ** 2 + ((b.high - b.value) / Z95) ** 2)
                d = b.value - a.value
                clicks_diff = Interval(d, d - Z95 * se, d + Z95 * se)
            comparisons.append(ArmComparison(other.arm, ref.arm, interval, p_value, clicks_diff))
    return results, comparisons
