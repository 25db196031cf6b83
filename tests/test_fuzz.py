"""Issue 7: property-based fuzzing of the photo API and of every query parameter.

Deterministic (derandomised, no example database): the same examples run every
time. The requests go through the Django test client in process, against a
small embedded catalog with a published index; a view that crashes answers 500
(it is not re-raised), so the property is about what a client would see.
"""

from __future__ import annotations

import io
from urllib.parse import quote, quote_from_bytes

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.answers import message_of
from tests.support.clients import photo_api
from tests.support.images import product_picture

# Every test runs against the small embedded catalog and its index, with its own cache and the loaded encoder.
pytestmark = pytest.mark.usefixtures("own_cache_and_encoder", "embedded_catalog")

FUZZ = hypothesis_settings(
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What a 400 from the photo API may say: our image messages, or Django's for an empty upload.
PHOTO_REFUSALS = (
    "This file is not an image we can read",
    "The image file is truncated or corrupt",
    "The image is too large",
    "The file is empty",
    "The submitted file is empty",
    "This image uses a colour mode we cannot read",
)


def _seed(fmt: str, **save) -> bytes:
    img = product_picture(size=(48, 64))
    if fmt == "GIF":
        img = img.convert("P")
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def _animated_gif() -> bytes:
    frames = [product_picture(colour=c, size=(48, 64)).convert("P") for c in ((220, 20, 20), (20, 20, 220))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return out.getvalue()


def _rgba() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (48, 64), (10, 200, 30, 128)).save(out, format="PNG")
    return out.getvalue()


SEEDS = {
    "jpeg": _seed("JPEG"),
    "progressive-jpeg": _seed("JPEG", progressive=True),
    "png": _seed("PNG"),
    "rgba-png": _rgba(),
    "gif": _seed("GIF"),
    "animated-gif": _animated_gif(),
    "webp": _seed("WEBP"),
    "webp-lossless": _seed("WEBP", lossless=True),
}


MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b""]


MUTATIONS = ["body-flip", "flip", "header-flip", "truncate", "splice", "insert", "delete"]


@st.composite
def mutated_images(draw) -> bytes:
    """A real image with bytes flipped, cut short, spliced with another format's header, or with bytes inserted.

    The first mutation (the one shrinking settles on) flips a byte past the
    headers, which often still decodes: both outcomes are exercised.
    """
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(MUTATIONS))
        if not data:
            break
        if op == "body-flip":
            at = draw(st.integers(len(data) // 2, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif op == "header-flip":  # where the sizes and chunk lengths live
            at = draw(st.integers(0, min(len(data), 64) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            cut = draw(st.integers(0, min(len(data), len(other), 96)))
            data = bytearray(other[:cut]) + data[cut:]
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


def _assert_photo_outcome(response) -> None:
    event(f"photo API answered {response.status_code}")
    assert response.status_code in (200, 400), f"{response.status_code}: {message_of(response)}"
    assert response["Content-Type"] == "application/json"
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["results"], list) and body["results"]
    else:
        assert body["error"].startswith(PHOTO_REFUSALS), body["error"]


@pytest.fixture
def fuzz_client(client):
    client.raise_request_exception = False
    return client


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.builds(lambda m, b: m + b, st.sampled_from(MAGIC), st.binary())))
def test_random_bytes_to_the_photo_api_get_200_or_our_400(fuzz_client, data: bytes):
    _assert_photo_outcome(photo_api(fuzz_client, data, name="fuzz.jpg", k="3"))


@FUZZ
@given(data=mutated_images(), content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream"]))
def test_mutated_real_images_to_the_photo_api_get_200_or_our_400(fuzz_client, data: bytes, content_type: str):
    _assert_photo_outcome(photo_api(fuzz_client, data, name="fuzz.png", content_type=content_type, k="3"))


def test_the_unmutated_seeds_all_search(fuzz_client):
    """The control: every seed image is accepted, so the mutations above start from valid files."""
    for name, data in SEEDS.items():
        response = photo_api(fuzz_client, data, k="3")
        assert response.status_code == 200, (name, message_of(response))


# --- Queries, trails and filters ---------------------------------------------------------------

# Any unicode but lone surrogates (which no client can send as UTF-8), control characters included.
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
TRAIL_STEP = st.one_of(
    st.builds(
        lambda mark, pid, aspect: f"{mark}{pid}{aspect}",
        st.sampled_from(["", "p", "n", "pn", "P", " "]),
        st.integers(0, 130),
        st.sampled_from(["", "", "c", "a", "s", "cs", "C", "x", " "]),
    ),
    st.builds(str, st.integers(-(2**70), 2**70)),
    TEXT,
)
TRAILS = st.one_of(TEXT, st.lists(TRAIL_STEP, max_size=60).map(",".join))
FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "gender": st.one_of(st.sampled_from(["Men", "Women"]), TEXT),
        "category": TEXT,
        "type": st.one_of(st.sampled_from(["Tshirts", "Caps"]), TEXT),
        "colour": st.one_of(st.sampled_from(["Red", "Blue"]), TEXT),
        "k": st.one_of(st.integers(-5, 200).map(str), TEXT),
        "photo": TEXT,
    },
)


def _assert_query_outcome(response, *, api: bool) -> None:
    event(f"answered {response.status_code}")
    if response.status_code == 414:
        # Only an address longer than any the site answers (a few fields of long, non-ASCII text, encoded).
        address = response.request["PATH_INFO"] + "?" + response.request.get("QUERY_STRING", "")
        assert len(address) > django_settings.REQUEST_URI_MAX_CHARS, message_of(response)
    else:
        assert response.status_code in (200, 400), f"{response.status_code}: {message_of(response)}"
    if api:
        body = response.json()
        if response.status_code == 200:
            assert isinstance(body["results"], list)
        else:
            assert isinstance(body["error"], str) and body["error"]


@FUZZ
@given(q=TEXT, filters=FILTERS)
def test_any_text_query_and_filters_get_200_or_400(fuzz_client, q: str, filters: dict[str, str]):
    params = {"q": q, **filters}
    _assert_query_outcome(fuzz_client.get("/api/search", params), api=True)
    _assert_query_outcome(fuzz_client.get("/", params), api=False)


@FUZZ
@given(trail=TRAILS, filters=FILTERS, anchor=st.sampled_from([101, 105, 124]))
def test_any_trail_and_filters_on_similar_get_200_or_400(fuzz_client, trail: str, filters, anchor: int):
    params = {"trail": trail, **filters}
    _assert_query_outcome(fuzz_client.get(f"/api/similar/{anchor}", params), api=True)
    _assert_query_outcome(fuzz_client.get(f"/similar/{anchor}/", params), api=False)


@FUZZ
@given(
    raw=st.binary(max_size=200),
    name=st.sampled_from(["q", "trail", "gender", "colour", "k", "photo"]),
    target=st.sampled_from(["/api/search", "/", "/api/similar/101", "/similar/101/"]),
)
def test_any_percent_encoded_bytes_in_the_query_string_get_200_or_400(fuzz_client, raw, name, target):
    # Invalid UTF-8 and NUL included; sent as is, not re-encoded by the client.
    response = fuzz_client.get(target, QUERY_STRING=f"{quote(name)}={quote_from_bytes(raw)}")
    _assert_query_outcome(response, api=target.startswith("/api/"))
