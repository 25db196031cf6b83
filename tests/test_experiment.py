"""A live A/B test of ranking: arms by session, each grid ranked and recorded by its arm, the arms compared."""

from __future__ import annotations

import secrets
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone

from gallery import events, experiments, insights, tasks
from gallery.models import ShopperEvent
from gallery.similarity import similar_grid
from gallery.trail import Trail
from tests.support import ROOT
from tests.support.processes import subprocess_env

pytestmark = pytest.mark.django_db

EXPERIMENT = "coherent:50,neighbours:50"
SHOPPERS = 40
MAX_CLICKS = 4
FOLD = 8  # a shopper looks at the first tiles only


def test_a_sessions_arm_is_stable_and_shares_are_kept(settings):
    settings.REFINE_EXPERIMENT = "coherent:80,neighbours:20"
    sessions = [secrets.token_urlsafe(16) for _ in range(10_000)]
    arms = [experiments.arm_of(s) for s in sessions]
    assert arms == [experiments.arm_of(s) for s in sessions]  # the same every time (and in every process: sha256)
    assert 0.77 < arms.count("coherent") / len(arms) < 0.83
    assert experiments.arm_of("") == ""  # no session (an API client without the cookie): the served strategy
    settings.REFINE_EXPERIMENT = ""
    assert experiments.arm_of(sessions[0]) == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("coherent:50", "two or more"),
        ("coherent:50,bogus:50", "served strategies are"),
        ("coherent:50,neighbours", "strategy:share pairs"),
        ("coherent:50,neighbours:0", "strategy:share pairs"),
        ("coherent:50,coherent:50", "twice"),
    ],
)
def test_a_bad_experiment_setting_says_what_is_wrong(settings, value, message):
    settings.REFINE_EXPERIMENT = value
    with pytest.raises(ImproperlyConfigured, match=message):
        experiments.experiment_arms()


def _shop(client: Client, *, target: int, vectors: dict[int, np.ndarray]) -> None:
    """One simulated shopper through the site: from the starting grid, clicks the tile (of the first FOLD) that
    looks most like the target until the target shows there, then views it (or gives up after MAX_CLICKS)."""
    page = client.get("/")
    assert page.status_code == 200
    for _ in range(MAX_CLICKS):
        items = page.context["items"][:FOLD]
        shown = {item.product.id: item for item in items}
        if target in shown:
            assert client.get(shown[target].view_url).status_code == 302
            return
        best = max(items, key=lambda item: float(vectors[item.product.id] @ vectors[target]))
        page = client.get(best.url)
        assert page.status_code == 200


def test_simulated_shoppers_in_two_arms_give_each_arms_numbers_with_intervals(
    demo_catalog_db, demo_vectors, settings, redis_db
):
    settings.REFINE_EXPERIMENT = EXPERIMENT
    events.client_reset()
    rng = np.random.default_rng(11)
    sessions: dict[str, str] = {}
    for target in rng.choice(demo_catalog_db, size=SHOPPERS, replace=False):
        client = Client()
        _shop(client, target=int(target), vectors=demo_vectors)
        session = client.cookies[settings.EVENTS_COOKIE_NAME].value
        sessions[session] = experiments.arm_of(session)
    tasks.events_flush.apply()

    # Every event of a session carries its arm; both arms have shoppers.
    recorded = dict(ShopperEvent.objects.values_list("session", "arm").distinct())
    assert recorded == sessions
    per_arm = {arm: list(sessions.values()).count(arm) for arm in ("coherent", "neighbours")}
    assert min(per_arm.values()) >= 8, per_arm

    # Each similar grid was ranked by its session's arm: ranking the same first click again by that arm's
    # strategy gives the grid recorded, and the two strategies do rank differently.
    differs = 0
    for session, arm in sessions.items():
        first = ShopperEvent.objects.filter(session=session, kind="grid", grid="similar").order_by("at").first()
        if first is None:
            continue
        anchor = first.data["anchor"]
        ranked = {
            strategy: [
                item.product.id
                for item in similar_grid(
                    anchor_id=anchor, trail=Trail().then(anchor), k=25, start_query="", strategy=strategy
                ).items
            ]
            for strategy in ("coherent", "neighbours")
        }
        assert first.data["ids"] == ranked[arm]
        differs += ranked["coherent"] != ranked["neighbours"]
    assert differs, "the arms' strategies ranked every grid alike: the test could not tell them apart"

    since = timezone.now() - timedelta(days=1)
    results, comparisons = insights.experiment_results(since=since, arms=["coherent", "neighbours"])
    assert {r.arm: r.sessions for r in results} == per_arm
    for r in results:
        converted = sum(
            1
            for s, arm in sessions.items()
            if arm == r.arm and ShopperEvent.objects.filter(session=s, kind="convert").exists()
        )
        assert r.converted == converted
        assert r.conversion.value == pytest.approx(converted / r.sessions)
        assert r.conversion.low <= r.conversion.value <= r.conversion.high
        assert 0 <= r.conversion.low and r.conversion.high <= 1
        if r.clicks_to_conversion:
            assert r.clicks_to_conversion.low <= r.clicks_to_conversion.value <= r.clicks_to_conversion.high
    (comparison,) = comparisons
    assert comparison.reference == "coherent" and comparison.arm == "neighbours"
    d = comparison.conversion_difference
    assert d.low <= d.value <= d.high and 0 <= comparison.conversion_p_value <= 1

    # The dashboard shows the arms, their sample sizes and intervals, and what the difference says.
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    staff = Client()
    staff.login(username="admin", password="pw")
    html = staff.get("/admin/gallery/shopperevent/dashboard/").content.decode()
    for r in results:
        assert f'<tr data-arm="{r.arm}"><td>{r.arm}</td><td>{r.sessions}</td><td>{r.converted}</td>' in html
    verdict = "significant" if comparison.significant else "not yet significant"
    assert f"<strong>{verdict}</strong>" in html


def test_manage_py_check_refuses_a_bad_experiment():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=subprocess_env(REFINE_EXPERIMENT="coherent:50,bogus:50"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "gallery.E001" in result.stderr and "bogus" in result.stderr
