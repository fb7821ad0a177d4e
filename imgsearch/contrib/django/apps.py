from __future__ import annotations

from django.apps import AppConfig


class ImgSearchConfig(AppConfig):
    name = "imgsearch.contrib.django"
    label = "imgsearch"
    verbose_name = "imgsearch"
    default_auto_field = "django.db.models.BigAutoField"
