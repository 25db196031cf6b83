from django.urls import path

from gallery import views

app_name = "gallery"
urlpatterns = [
    path("", views.home, name="home"),
    path("similar/<int:product_id>/", views.similar, name="similar"),
    path("api/search", views.api_search, name="api-search"),
    path("api/similar/<int:product_id>", views.api_similar, name="api-similar"),
    path("api/products/<int:product_id>", views.api_product, name="api-product"),
    path(
        "api/products/<int:product_id>/availability",
        views.api_product_availability,
        name="api-product-availability",
    ),
    path("p/<int:product_id>/go", views.view_product, name="view-product"),
    path("search-by-image", views.search_by_image, name="search-by-image"),
    path("api/search-by-image", views.api_search_by_image, name="api-search-by-image"),
    path("api/status", views.api_status, name="api-status"),
    path("api/openapi.json", views.api_openapi, name="api-openapi"),
    path("photo/<str:token>.jpg", views.photo_thumbnail, name="photo-thumbnail"),
]
