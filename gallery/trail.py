"""The refinement trail: the products a shopper clicked, kept in the URL.

Written as ``trail=12,p34c,n56``: each step a product id, ``p`` marks a pinned
step (it keeps pulling the grid towards it), ``n`` a "not like this" step (what
looks more like it than like the liked steps sinks). A suffix says what the
step should keep: ``c`` the same colour, ``a`` any colour, ``s`` the same shape
in other colours; no suffix is the default blend (links from before aspects
existed have none and keep their meaning). The product in the page's path is
the newest step. Pure data: no database, no vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

MAX_STEPS = 12
# Ids below 2**53, as catalog import accepts (gallery.catalog.MAX_ID; kept here so
# the trail needs no pandas): 16 digits at most, so every importable product
# can be on a trail and no id loses precision in JSON.
MAX_ID = 2**53
_STEP = re.compile(r"^([pn]?)(\d{1,16})([cas]?)$")
# Aspect codes (recommender.colour.Aspect's values) and what the page calls them.
ASPECTS = {"c": "same colour", "a": "any colour", "s": "same shape"}


class TrailError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    product_id: int
    mark: str = ""  # "", "p" (pinned) or "n" (not like this)
    aspect: str = ""  # "", or a code of ASPECTS

    @property
    def pinned(self) -> bool:
        return self.mark == "p"

    @property
    def disliked(self) -> bool:
        return self.mark == "n"

    def __str__(self) -> str:
        return f"{self.mark}{self.product_id}{self.aspect}"


@dataclass(frozen=True)
class Trail:
    steps: tuple[Step, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Trail:
        """Parse the ``trail`` parameter; raises TrailError with a readable reason."""
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if len(parts) > MAX_STEPS * 4:
            raise TrailError(f"the trail has more than {MAX_STEPS * 4} steps")
        steps = []
        for part in parts:
            match = _STEP.match(part)
            if not match:
                raise TrailError(
                    f"{part[:20]!r} is not a trail step (a product id, optionally prefixed p or n "
                    "and suffixed c, a or s)"
                )
            product_id = int(match.group(2))
            if product_id >= MAX_ID:
                raise TrailError(f"{part[:20]!r} is not a trail step (product ids are below {MAX_ID})")
            steps.append(Step(product_id, match.group(1), match.group(3)))
        return cls(tuple(steps)).capped()

    def __str__(self) -> str:
        return ",".join(str(step) for step in self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def capped(self) -> Trail:
        """Keep the newest steps, but never drop a pinned or disliked one before a plain one."""
        steps = list(self.steps)
        while len(steps) > MAX_STEPS:
            plain = [i for i, step in enumerate(steps[:-1]) if not step.mark]
            steps.pop(plain[0] if plain else 0)
        return Trail(tuple(steps))

    def then(self, product_id: int) -> Trail:
        """The trail after clicking ``product_id`` (a repeated click moves the step to the end)."""
        kept = [step for step in self.steps if step.product_id != product_id]
        return Trail((*kept, Step(product_id))).capped()

    def without(self, index: int) -> Trail:
        return Trail(self.steps[:index] + self.steps[index + 1 :])

    def marked(self, index: int, mark: str) -> Trail:
        """The trail with step ``index`` marked (toggling: marking twice clears)."""
        step = self.steps[index]
        new = replace(step, mark="" if step.mark == mark else mark)
        return Trail(self.steps[:index] + (new,) + self.steps[index + 1 :])

    def aspected(self, index: int, aspect: str) -> Trail:
        """The trail with step ``index`` asking for ``aspect`` (a code of ASPECTS; asking twice clears it)."""
        if aspect not in ASPECTS:
            raise TrailError(f"unknown aspect {aspect!r}")
        step = self.steps[index]
        new = replace(step, aspect="" if step.aspect == aspect else aspect)
        return Trail(self.steps[:index] + (new,) + self.steps[index + 1 :])

    @property
    def anchor(self) -> Step | None:
        """The newest step not marked "not like this": the product the grid starts from."""
        for step in reversed(self.steps):
            if not step.disliked:
                return step
        return None

    @property
    def product_ids(self) -> list[int]:
        return [step.product_id for step in self.steps]
