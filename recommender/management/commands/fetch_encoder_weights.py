"""manage.py fetch_encoder_weights: bring torchvision's ResNet50 ImageNet weights into the torch cache, once, briefly.

scripts/run.sh runs it before embedding. An install that reaches the download server ends up on ResNet50
(``ENCODER=auto`` picks it once the file is in the cache); one that cannot says so in one line and goes on
with EfficientNet-Lite0. Nothing else in the project downloads weights: tests and workers never call this.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender import runtime
from recommender.spaces import (
    EFFICIENTNET_LITE0_ID,
    EFFICIENTNET_LITE1_ID,
    EFFICIENTNET_LITE2_ID,
    RESNET50_ID,
    checkpoint_problem,
    resnet50_cache_path,
    resnet50_weights_find,
    space_encoder_id,
)

# torch.hub's convention (HASH_REGEX): "name-<first hex digits of the sha256>.ext".
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
CHUNK_BYTES = 1 << 16
ENCODER_LABELS = {
    RESNET50_ID: "ResNet50",
    EFFICIENTNET_LITE0_ID: "EfficientNet-Lite0",
    EFFICIENTNET_LITE1_ID: "EfficientNet-Lite1",
    EFFICIENTNET_LITE2_ID: "EfficientNet-Lite2",
}


class FetchFailed(Exception):
    """The weights could not be had now (no network, no answer, a stall, an HTTP error); nothing was written."""


class WeightsRefused(FetchFailed):
    """A file arrived but is not the published one (its hash or format is wrong); nothing was written."""


def _open_within(url: str, *, connect_timeout: float, read_timeout: float) -> urllib.request.addinfourl:
    """urlopen ``url`` with the whole opening (name lookup, connect, TLS, response headers) under one deadline.

    The socket timeout alone bounds each connect and read but not the name lookup, which on a machine
    without a network may wait far longer; so the opening runs in a daemon thread that is abandoned
    (and closes what it got, if it ever gets it) once ``connect_timeout`` has passed.
    """
    outcome: dict[str, object] = {}
    abandoned = threading.Event()

    def attempt() -> None:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "visual-gallery"})  # noqa: S310
            response = urllib.request.urlopen(request, timeout=read_timeout)  # noqa: S310 (http(s) checked)
        except (OSError, HTTPException, ValueError) as exc:
            outcome["error"] = exc
            return
        if abandoned.is_set():
            response.close()
        else:
            outcome["response"] = response

    thread = threading.Thread(target=attempt, name="fetch-weights", daemon=True)
    thread.start()
    thread.join(connect_timeout)
    if thread.is_alive():
        abandoned.set()
        raise FetchFailed(f"no answer from {urlsplit(url).netloc} within {connect_timeout:g} s")
    error = outcome.get("error")
    if isinstance(error, urllib.error.HTTPError):
        raise FetchFailed(f"{urlsplit(url).netloc} answered HTTP {error.code}")
    if error is not None:
        reason = getattr(error, "reason", None) or error
        raise FetchFailed(f"{urlsplit(url).netloc} could not be reached ({reason})")
    return outcome["response"]  # type: ignore[return-value]


def weights_fetch(
    *,
    url: str,
    dest: Path,
    connect_timeout: float,
    read_timeout: float,
    max_seconds: float,
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Download ``url`` to ``dest`` and return its size; ``dest`` appears whole and verified, or not at all.

    The sha256 of the body must start with the hex prefix in the URL's file name, and the file must be a
    readable PyTorch checkpoint. It is written to a hidden temporary file beside ``dest`` and renamed
    into place, so a reader never sees part of it. A download that stalls for ``read_timeout`` or runs
    past ``max_seconds`` is given up. Raises FetchFailed (WeightsRefused for a wrong file).
    """
    name = Path(urlsplit(url).path).name
    match = HASH_IN_NAME.search(name)
    if urlsplit(url).scheme not in {"http", "https"} or match is None:
        raise WeightsRefused(f"{url} is not an http(s) URL whose file name carries a hash prefix (name-<sha256>.pth)")
    expected = match.group(1)
    started = time.monotonic()
    response = _open_within(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            received = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        # read1: what has arrived (up to CHUNK_BYTES), so a slow server still shows progress.
                        chunk = response.read1(CHUNK_BYTES)
                    except (OSError, HTTPException) as exc:  # a stall past read_timeout, a reset, a short body
                        reason = str(exc) or type(exc).__name__
                        raise FetchFailed(f"the download stopped after {received} bytes ({reason})") from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if progress:
                        progress(received, total)
                    if time.monotonic() - started > max_seconds:
                        raise FetchFailed(f"the download took longer than {max_seconds:g} s")
                out.flush()
                os.fsync(out.fileno())
            if total is not None and received != total:
                raise FetchFailed(f"the download ended after {received} of {total} bytes")
            if not digest.hexdigest().startswith(expected):
                raise WeightsRefused(f"its sha256 does not start with {expected}, as its name {name} says")
            problem = checkpoint_problem(tmp)
            if problem:
                raise WeightsRefused(problem)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return received


def leftovers_remove(dest: Path) -> None:
    """Temporary files of a fetch that was killed (SIGKILL leaves no chance to clean up)."""
    for stale in dest.parent.glob(f".{dest.name}.*.part"):
        stale.unlink(missing_ok=True)


class Command(BaseCommand):
    help = (
        "With ENCODER=auto, use ResNet50 weights placed in the torch cache and, with RESNET50_FETCH=1, fetch "
        "torchvision's ImageNet weights there first (short timeouts, hash checked, written atomically); "
        "without them, say so and succeed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--connect-timeout", type=float, default=15.0, help="seconds to get an answer (15)")
        parser.add_argument("--read-timeout", type=float, default=15.0, help="seconds a download may stall (15)")
        parser.add_argument("--max-seconds", type=float, default=900.0, help="seconds the whole download may take")
        parser.add_argument(
            "--switch",
            action="store_true",
            help="when the weights are there and the site was switched to an EfficientNet-Lite0 space "
            "(use_projection, train_embedding_head --use-if-better), move it to ResNet50 (reembed_catalog resnet50)",
        )

    def handle(self, *args, connect_timeout: float, read_timeout: float, max_seconds: float, switch: bool, **options):
        name = settings.ENCODER.strip().lower()
        quiet = options["verbosity"] == 0
        if name != "auto":
            self.stdout.write(f"ENCODER={name}: not fetching ResNet50 weights (only ENCODER=auto would use them)")
            return
        found, _ = resnet50_weights_find(weights_file=settings.RESNET50_WEIGHTS_FILE or None)
        if found:
            self.stdout.write(f"ResNet50 weights present: {found}")
        elif not settings.RESNET50_FETCH:
            # The default: nothing is downloaded. Weights an admin places are used (the branch above).
            self.stdout.write(
                f"RESNET50_FETCH is off: not fetching ResNet50 weights; serving {self._served()} "
                f"(place {resnet50_cache_path().name} at {resnet50_cache_path()}, set RESNET50_WEIGHTS_FILE, "
                "or set RESNET50_FETCH=1 to fetch them)"
            )
            return
        else:
            dest = resnet50_cache_path()
            leftovers_remove(dest)
            url = settings.RESNET50_WEIGHTS_URL
            bars: list[tqdm] = []

            def progress(received: int, total: int | None) -> None:
                # The bar appears once the server answers, so an offline run prints its one line only.
                if not bars:
                    bars.append(tqdm(total=total, unit="B", unit_scale=True, desc="ResNet50 weights", disable=quiet))
                bars[0].update(received - bars[0].n)

            try:
                size = weights_fetch(
                    url=url,
                    dest=dest,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    max_seconds=max_seconds,
                    progress=progress,
                )
            except WeightsRefused as exc:
                raise CommandError(f"ResNet50 weights from {url} refused, nothing kept: {exc}") from exc
            except FetchFailed as exc:
                self.stdout.write(
                    f"offline: serving {self._served()}; ResNet50 weights not fetched from {url}: {exc} "
                    f"(place {dest.name} at {dest} or set RESNET50_WEIGHTS_FILE to use ResNet50)"
                )
                return
            finally:
                for bar in bars:
                    bar.close()
            self.stdout.write(self.style.SUCCESS(f"ResNet50 weights saved: {dest} ({size / 1e6:.1f} MB from {url})"))
        # encoder_choice() is remembered per process; decide again now that the file is there.
        runtime.reset()
        if switch:
            self._follow(verbosity=options["verbosity"])

    def _served(self) -> str:
        """What the site serves without ResNet50 weights: a space it was switched to, else the Lite0 fallback."""
        # Not runtime.active_space(): deciding the fallback logs its WARNING, and offline is one line.
        space = runtime.space_switch_read() or (
            f"{EFFICIENTNET_LITE0_ID}+{settings.EMBEDDING_HEAD}" if settings.EMBEDDING_HEAD else EFFICIENTNET_LITE0_ID
        )
        base = space_encoder_id(space)
        return ENCODER_LABELS.get(base, base) + (" with a trained head" if "+" in space else "")

    def _follow(self, *, verbosity: int) -> None:
        """Bring a site pinned to the Lite0 fallback over to ResNet50, built beside the served space first."""
        choice = runtime.encoder_choice()
        if choice.space != RESNET50_ID:
            return  # the file is there but unusable: the footer and admin say why
        pinned = runtime.space_switch_read()
        if pinned is None or space_encoder_id(pinned) == RESNET50_ID:
            # ENCODER=auto alone decides: embed_catalog and build_index fill the ResNet50 space next.
            return
        if space_encoder_id(pinned) != EFFICIENTNET_LITE0_ID:
            self.stdout.write(
                f"Still serving {pinned}, as switched to; `manage.py reembed_catalog resnet50` moves to ResNet50"
            )
            return
        # The pin was made while ENCODER=auto fell back to Lite0 (a head served over it, most often).
        # reembed_catalog builds the ResNet50 vectors and index beside it and switches only when they are
        # complete, so no process ever serves a space without its index.
        self.stdout.write(f"Moving the site from {pinned} to {RESNET50_ID}")
        call_command("reembed_catalog", "resnet50", stdout=self.stdout, stderr=self.stderr, verbosity=verbosity)
