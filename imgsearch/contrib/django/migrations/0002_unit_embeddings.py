"""Embeddings written through Django are made unit length first (UnitHalfVectorField), as the
library writes them; the column is unchanged (the models are unmanaged)."""

from django.db import migrations

import imgsearch.contrib.django.models


class Migration(migrations.Migration):
    dependencies = [("imgsearch", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="embedding",
            name="embedding",
            field=imgsearch.contrib.django.models.UnitHalfVectorField(),
        ),
    ]
