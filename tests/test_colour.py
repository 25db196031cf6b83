"""The colour descriptor of a product photo's foreground, and its blend with image vectors, on drawn products."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lab.shopper import product_draw
from recommender import colour
from recommender.colour import Aspect
from recommender.preprocess import image_prepare


def _prepared(image: Image.Image, *, fmt: str = "JPEG") -> np.ndarray:
    """The photo as the product path prepares it: encoded, decoded, fitted on a white 224 square."""
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return image_prepare(out.getvalue(), size=224)


def _descriptor(article_type: str, colour_name: str, *, seed: int, pattern: str = "Solid") -> np.ndarray:
    drawn = product_draw(article_type=article_type, colour_name=colour_name, pattern=pattern, seed=seed)
    return colour.colour_descriptor(_prepared(drawn))


def test_lab_conversion_matches_reference_values():
    lab = colour.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(lab[3], [32.30, 79.19, -107.86], atol=0.05)


def test_descriptor_is_a_unit_vector_and_deterministic():
    first = _descriptor("Shirts", "Red", seed=1)
    again = _descriptor("Shirts", "Red", seed=1)
    assert first.shape == (colour.COLOUR_DIM,)
    assert first.dtype == np.float32
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    np.testing.assert_array_equal(first, again)


def test_nearest_by_colour_of_a_red_shirt_is_the_other_red_product_not_a_blue_shirt():
    red_shirt = _descriptor("Shirts", "Red", seed=1)
    others = {
        "red t-shirt": _descriptor("Tshirts", "Red", seed=2),
        "blue shirt": _descriptor("Shirts", "Blue", seed=3),
        "teal shirt": _descriptor("Shirts", "Teal", seed=4),
        "maroon shirt": _descriptor("Shirts", "Maroon", seed=5),
        "brown shirt": _descriptor("Shirts", "Brown", seed=6),
    }
    ranked = sorted(others, key=lambda name: -float(others[name] @ red_shirt))
    assert ranked[0] == "red t-shirt"
    # Perceptual: maroon (a dark red) is nearer red than blue or teal are.
    assert ranked.index("maroon shirt") < ranked.index("blue shirt")
    assert ranked.index("maroon shirt") < ranked.index("teal shirt")


def test_every_demo_colour_is_nearest_its_own_name_across_product_types():
    names = ["Black", "White", "Grey", "Navy Blue", "Blue", "Red", "Green", "Yellow", "Pink", "Brown", "Beige"]
    shirts = np.stack([_descriptor("Shirts", name, seed=10 + i) for i, name in enumerate(names)])
    shoes = np.stack([_descriptor("Casual Shoes", name, seed=40 + i) for i, name in enumerate(names)])
    nearest = (shoes @ shirts.T).argmax(axis=1)
    assert [names[i] for i in nearest] == names


def test_background_and_padding_are_ignored():
    drawn = product_draw(article_type="Handbags", colour_name="Green", seed=7)
    tight = _prepared(drawn)
    # The same product on a much wider white canvas: more background, the same product pixels.
    wide = Image.new("RGB", (drawn.width * 3, drawn.height), (255, 255, 255))
    wide.paste(drawn, (drawn.width, 0))
    padded = _prepared(wide)
    assert float(colour.colour_descriptor(tight) @ colour.colour_descriptor(padded)) > 0.97


def test_transparent_png_on_white_describes_like_the_opaque_photo():
    rgba = Image.new("RGBA", (300, 400), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (180, 260), (38, 92, 200, 255)), (60, 70))
    opaque = Image.new("RGB", (300, 400), (255, 255, 255))
    opaque.paste((38, 92, 200), (60, 70, 240, 330))
    from_png = colour.colour_descriptor(_prepared(rgba, fmt="PNG"))
    from_rgb = colour.colour_descriptor(_prepared(opaque, fmt="PNG"))
    assert float(from_png @ from_rgb) > 0.999


def test_white_product_on_white_still_gets_a_white_descriptor():
    white = _descriptor("Tshirts", "White", seed=8)
    black = _descriptor("Tshirts", "Black", seed=9)
    other_white = _descriptor("Shirts", "White", seed=11)
    assert abs(float(np.linalg.norm(white)) - 1.0) < 1e-5
    assert float(white @ other_white) > float(white @ black)
    blank = colour.colour_descriptor(np.full((224, 224, 3), 255, dtype=np.uint8))
    assert abs(float(np.linalg.norm(blank)) - 1.0) < 1e-5


def test_descriptor_refuses_what_is_not_rgb():
    with pytest.raises(ValueError, match="RGB"):
        colour.colour_descriptor(Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="uint8"):
        colour.srgb_to_lab(np.zeros((2, 3), dtype=np.float32))


def test_aspects_reorder_a_same_type_and_a_same_colour_candidate():
    # One candidate shares the step's shape (high image score) in another colour, the other its colour only.
    image_scores = np.array([0.90, 0.70], dtype=np.float32)
    colour_scores = np.array([0.20, 0.95], dtype=np.float32)
    same_colour = colour.aspect_scores(image_scores=image_scores, colour_scores=colour_scores, aspect="c")
    any_colour = colour.aspect_scores(image_scores=image_scores, colour_scores=colour_scores, aspect=Aspect.ANY_COLOUR)
    same_shape = colour.aspect_scores(image_scores=image_scores, colour_scores=colour_scores, aspect="s")
    assert same_colour.argmax() == 1
    np.testing.assert_allclose(any_colour, image_scores)
    assert same_shape.argmax() == 0 and same_shape[1] < any_colour[1]
    with pytest.raises(ValueError):
        colour.aspect_scores(image_scores=image_scores, colour_scores=colour_scores, aspect="x")


def test_blended_vector_cosine_equals_the_blend_of_cosines():
    rng = np.random.default_rng(0)

    def unit(n: int, d: int) -> np.ndarray:
        x = rng.normal(size=(n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    images, colours = unit(6, 32), unit(6, colour.COLOUR_DIM)
    joined = colour.blended_vector(images, colours, colour_weight=0.35)
    expected = colour.blend(images @ images.T, colours @ colours.T, colour_weight=0.35)
    np.testing.assert_allclose(joined @ joined.T, expected, atol=1e-5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        colour.blended_vector(images, colours, colour_weight=-0.1)
