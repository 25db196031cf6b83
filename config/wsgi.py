import logging
import os
import threading

from config.malloc import keep_freed_memory

# A web process answers many small requests at once (workers x threads): a BLAS
# thread pool per matrix product only makes them contend for the same cores (an
# exact pass over 700 vectors took 11 ms with OpenBLAS's threads on a busy 2-core
# machine, 0.6 ms without). Set before numpy is first imported; the encoder's
# torch threads are set apart (ENCODER_THREADS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Freed memory is kept for the next request rather than returned to the kernel
# page by page (config/malloc.py).
keep_freed_memory()

from django.core.wsgi import get_wsgi_application  # noqa: E402 - after the process settings above

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()


def _warm() -> None:
    # A web process builds (or loads from Redis) its text-search index before
    # its first shopper does; a failure only means the first search builds it.
    # Imported here, not at the top: gallery.search needs the apps loaded by get_wsgi_application().
    from gallery.search import search_index_warm

    try:
        search_index_warm()
    except Exception:  # noqa: BLE001 - a cold start must never stop the server
        logging.getLogger(__name__).warning("Could not warm the text-search index", exc_info=True)


threading.Thread(target=_warm, name="search-index-warm", daemon=True).start()

# With INDEX_STORE set, this web process keeps the node's copy of the index current (recommender/delivery.py).
# Started here, in each web process: gunicorn runs no supervisor of its own, and a thread per process
# with a per-node file lock needs none (one process downloads, every process switches on its next query).
from recommender.api import index_delivery_start  # noqa: E402

index_delivery_start()
