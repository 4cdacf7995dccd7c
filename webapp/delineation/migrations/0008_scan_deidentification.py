from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('delineation', '0007_teams'),
    ]

    operations = [
        migrations.AddField(
            model_name='scan',
            name='deidentification',
            field=models.JSONField(blank=True, null=True),
        ),
    ]
