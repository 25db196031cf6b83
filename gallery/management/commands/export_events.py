import csv
import json
from datetime import timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from gallery.models import ShopperEvent

COLUMNS = ["at", "session", "kind", "arm", "grid", "query", "count", "product_id", "position", "data"]


class Command(BaseCommand):
    help = (
        "Write stored shopper events as CSV (one row per event, oldest first) for offline analysis: "
        f"columns {', '.join(COLUMNS)}; data is the rest of the event as JSON (a grid's ids, a trail edit)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="only the last DAYS days (default: all kept)")
        parser.add_argument("--kind", choices=ShopperEvent.Kind.values, action="append", help="only these kinds")
        parser.add_argument("--output", "-o", type=Path, default=None, help="a file to write (default: stdout)")

    def handle(self, *args, days: int | None, kind: list[str] | None, output: Path | None, **options) -> None:
        if days is not None and days < 1:
            raise CommandError("--days must be 1 or more")
        qs = ShopperEvent.objects.order_by("at", "id")
        if days is not None:
            qs = qs.filter(at__gte=timezone.now() - timedelta(days=days))
        if kind:
            qs = qs.filter(kind__in=kind)
        try:
            out = output.open("w", newline="", encoding="utf-8") if output else self.stdout
        except OSError as exc:
            raise CommandError(f"{output} cannot be written: {exc.strerror}") from exc
        written = 0
        try:
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            for row in qs.values_list(*COLUMNS).iterator(chunk_size=2000):
                at, *rest, data = row
                writer.writerow([at.isoformat(), *("" if v is None else v for v in rest), json.dumps(data)])
                written += 1
        finally:
            if output:
                out.close()
        if output:
            self.stderr.write(f"{written} events written to {output}")
