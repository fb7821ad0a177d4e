"""Region rows: an image's regions beside its whole row (imgsearch's migration 0040, which
``migrate`` runs through 0001's operation); the model is unmanaged."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("imgsearch", "0004_product_text"),
    ]

    operations = [
        migrations.AddField(model_name="embedding", name="region", field=models.SmallIntegerField(default=0)),
    ]
