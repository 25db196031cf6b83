"""A live A/B test of ranking: which served strategy ranks a session's trail grids.

REFINE_EXPERIMENT names two or more of the engine's served strategies with integer shares
(``coherent:50,neighbours:50``). A session's arm is a stable hash of its anonymous id, so a shopper
keeps one arm on every page and every web process; without an id (an API client sending no cookie)
or without an experiment, the arm is "" and REFINE_STRATEGY ranks.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from recommender import api


@dataclass(frozen=True)
class Arm:
    strategy: str
    share: int


@functools.lru_cache(maxsize=8)
def _parse(value: str) -> tuple[Arm, ...]:
    if not value.strip():
        return ()
    served = api.strategies_served()
    arms: list[Arm] = []
    for part in value.split(","):
        name, sep, share = part.strip().partition(":")
        name = name.strip()
        if not sep or not share.strip().isdigit() or int(share) < 1:
            raise ImproperlyConfigured(
                f"REFINE_EXPERIMENT must list strategy:share pairs with whole shares of 1 or more, "
                f"e.g. coherent:50,neighbours:50; {part.strip()!r} is not one"
            )
        if name not in served:
            raise ImproperlyConfigured(
                f"REFINE_EXPERIMENT names {name!r}; the served strategies are {', '.join(served)}"
            )
        if any(arm.strategy == name for arm in arms):
            raise ImproperlyConfigured(f"REFINE_EXPERIMENT names {name!r} twice")
        arms.append(Arm(name, int(share)))
    if len(arms) < 2:
        raise ImproperlyConfigured("REFINE_EXPERIMENT needs two or more strategies, e.g. coherent:50,neighbours:50")
    return tuple(arms)


def experiment_arms() -> tuple[Arm, ...]:
    """The running experiment's arms (empty: none runs). Raises ImproperlyConfigured for a bad setting."""
    return _parse(settings.REFINE_EXPERIMENT)


def arm_of(session: str) -> str:
    """The strategy ranking ``session``'s grids in the experiment ("" outside one, or without a session)."""
    arms = experiment_arms()
    if not arms or not session:
        return ""
    total = sum(arm.share for arm in arms)
    # sha256, not hash(): the same on every process and machine, and spread evenly whatever the ids.
    point = int.from_bytes(hashlib.sha256(f"refine-experiment:{session}".encode()).digest()[:8], "big") % total
    for arm in arms:
        if point < arm.share:
            return arm.strategy
        point -= arm.share
    return arms[-1].strategy  # unreachable: the shares add up to total
