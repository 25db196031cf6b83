"""Row factories for tests."""

import factory

from gallery.models import Product


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    id = factory.Sequence(lambda n: 10_000 + n)
    gender = "Men"
    master_category = "Apparel"
    sub_category = "Topwear"
    article_type = "Shirts"
    base_colour = "Blue"
    season = "Summer"
    year = 2012
    usage = "Casual"
    name = factory.LazyAttribute(lambda p: f"{p.gender} {p.base_colour} {p.article_type}")
