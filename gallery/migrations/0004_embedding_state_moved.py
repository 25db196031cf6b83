# The embedding state moved to the vector engine (recommender.EmbeddingState, which
# copied it in recommender 0002); the product keeps only its image and version.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0002_import_jobs'),
        ('recommender', '0002_embeddingstate'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='product',
            name='product_embed_queue',
        ),
        migrations.RemoveField(
            model_name='product',
            name='embed_claimed_at',
        ),
        migrations.RemoveField(
            model_name='product',
            name='embed_claimed_by',
        ),
        migrations.RemoveField(
            model_name='product',
            name='embed_error',
        ),
        migrations.RemoveField(
            model_name='product',
            name='embed_requested_at',
        ),
        migrations.RemoveField(
            model_name='product',
            name='embed_status',
        ),
        migrations.AlterField(
            model_name='product',
            name='updated_at',
            field=models.DateTimeField(auto_now=True, db_index=True),
        ),
    ]
