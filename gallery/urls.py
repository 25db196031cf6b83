from django.urls import path

from gallery import views

app_name = "gallery"
urlpatterns = [
    path("", views.home, name="home"),
    path("similar/<int:product_id>/", views.similar, name="similar"),
    path("api/search", views.api_search, name="api-search"),
    path("api/similar/<int:product_id>", views.api_similar, name="api-similar"),
    path("api/status", views.api_status, name="api-status"),
]
