# The embedding state machine's own table; the state products held in gallery is copied here
# (gallery 0004 then drops those columns).

import django.db.models.deletion
from django.db import migrations, models


def _copy_states(apps, schema_editor) -> None:  # noqa: ANN001
    """Each product with an image gets the state its embed_* columns held."""
    Product = apps.get_model("gallery", "Product")
    EmbeddingState = apps.get_model("recommender", "EmbeddingState")
    rows = (
        Product.objects.exclude(image="")
        .order_by("id")
        .values_list(
            "id", "image", "image_version", "embed_status", "embed_error",
            "embed_requested_at", "embed_claimed_at", "embed_claimed_by",
        )
    )
    batch = []
    for pid, image, version, status, error, requested, claimed_at, claimed_by in rows.iterator(chunk_size=2000):
        batch.append(
            EmbeddingState(
                product_id=pid, image_name=image, image_version=version, status=status, error=error,
                requested_at=requested, claimed_at=claimed_at, claimed_by=claimed_by,
            )
        )
        if len(batch) >= 2000:
            EmbeddingState.objects.bulk_create(batch)
            batch = []
    EmbeddingState.objects.bulk_create(batch)


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0002_import_jobs'),
        ('recommender', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='EmbeddingState',
            fields=[
                ('product', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='embedding_state', serialize=False, to='gallery.product')),
                ('image_name', models.CharField(max_length=255)),
                ('image_version', models.PositiveIntegerField()),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('processing', 'Claimed'), ('done', 'Done'), ('failed', 'Failed')], default='pending', max_length=16)),
                ('error', models.TextField(blank=True)),
                ('requested_at', models.DateTimeField(blank=True, null=True)),
                ('queued_at', models.DateTimeField(blank=True, null=True)),
                ('claimed_at', models.DateTimeField(blank=True, null=True)),
                ('claimed_by', models.CharField(blank=True, max_length=64)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'indexes': [models.Index(fields=['status', 'requested_at'], name='embedding_state_queue')],
            },
        ),
        migrations.RunPython(_copy_states, migrations.RunPython.noop),
    ]
