"""Product text: title, description and brand (imgsearch's migration 0020, which ``migrate`` runs
through 0001's operation); the model is unmanaged."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("imgsearch", "0003_shared_images"),
    ]

    operations = [
        migrations.AddField(model_name="product", name="title", field=models.TextField(null=True)),
        migrations.AddField(model_name="product", name="description", field=models.TextField(null=True)),
        migrations.AddField(model_name="product", name="brand", field=models.TextField(null=True)),
    ]
