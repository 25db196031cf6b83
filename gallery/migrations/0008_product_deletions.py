from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0007_shopper_events"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProductDeletion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("product_id", models.PositiveBigIntegerField()),
                ("deleted_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["id"]},
        ),
    ]
