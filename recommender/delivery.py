"""Index builds delivered to every node: publish a build to a shared store, fetch it into each node's INDEX_DIR.

A build is made by one worker in its own index directory (``recommender.index``). With a
store configured it is then published there: its files first, under ``<space>/builds/<version>/``,
then one small pointer naming the build and its files' sizes and checksums. A reader that
sees the new pointer sees a whole build; a half-uploaded one is named by no pointer.

Each node keeps its own copy in its INDEX_DIR and serves only that, memory-mapped from
local disk (a mapped file read over a network file system or object store is slow and
erratic, and a page past the end of a file cut on a shared mount kills the process). A
fetcher notices a newer pointer, downloads the build into a hidden folder beside the
node's builds, checks every byte against the pointer's and the build's own checksums,
renames it into place and flips the node's ``CURRENT``: until then the node serves the
build it had. It records what it did in ``DELIVERY.json`` beside ``CURRENT``, which is
how every process of the node (and ``/api/status``, ``/readyz``) knows.

Stores: a directory (``DirStore``: the same layout as an index directory, so with the
store *being* INDEX_DIR nothing is copied and no fetcher runs) or an S3-compatible bucket
(``S3Store``, through a boto3 bucket that django-storages configured). No Django here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from recommender.index import (
    BUILD_FILES,
    BUILDS_DIR,
    INDEX_FILE,
    ITEMS_FILE,
    META_FILE,
    IndexCorrupt,
    _file_digest,
    _fsync_dir,
    _recorded_files,
    build_files_verify,
    build_meta_read,
    builds_prune,
    index_files_verify,
    pointer_publish,
    published_version,
)

logger = logging.getLogger(__name__)

STATUS_FILE = "DELIVERY.json"
LOCK_FILE = ".delivery.lock"
# The pointer object of a bucket: the version and every file's size and checksum.
MANIFEST_NAME = "CURRENT.json"
FETCHING_PREFIX = ".fetch-"
# A pointer naming anything but what a build may hold (index.BUILD_FILES) is refused: no path comes from the store.
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$")


class StoreUnavailable(RuntimeError):
    """The store could not be read or written (unreachable, refused, timed out). The message names no secret."""


@dataclass(frozen=True)
class Manifest:
    """A published build: its version and each file's (size, blake2b); None where the store does not say."""

    version: str
    files: dict[str, tuple[int | None, str | None]]


def manifest_check(manifest: Manifest) -> Manifest:
    """The manifest, or IndexCorrupt when it names a version or file no build can have."""
    if not _VERSION.match(manifest.version):
        raise IndexCorrupt("the store's pointer names no valid build")
    unknown = set(manifest.files) - set(BUILD_FILES)
    if unknown or META_FILE not in manifest.files or INDEX_FILE not in manifest.files:
        raise IndexCorrupt(f"the store's pointer for build {manifest.version} lists unexpected files")
    return manifest


def manifest_of(build: Path, version: str) -> Manifest:
    """The manifest of a whole local build: every file's size and checksum (meta.json's included)."""
    meta = build_meta_read(build, version)
    names = set(meta.files) or {n for n in BUILD_FILES if (build / n).exists()}
    files = {name: ((build / name).stat().st_size, _file_digest(build / name)) for name in names | {META_FILE}}
    return manifest_check(Manifest(version=version, files=files))


class Store(Protocol):
    kind: str

    def file_read(self, name: str) -> bytes | None: ...
    def file_write(self, name: str, data: bytes) -> None: ...
    def pointer_read(self, space: str) -> Manifest | None: ...
    def download(self, space: str, version: str, name: str, dest: Path) -> None: ...
    def publish(self, space: str, build: Path, manifest: Manifest, *, keep: int) -> None: ...


class DirStore:
    """A directory every node mounts, laid out as an index directory (``<space>/CURRENT``, ``<space>/builds/``)."""

    kind = "dir"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _space(self, space: str) -> Path:
        if not self.root.is_dir():
            # An unmounted share looks like an empty folder's absence: never "nothing published".
            raise StoreUnavailable("the index store directory is not there (not mounted?)")
        return self.root / space

    def file_read(self, name: str) -> bytes | None:
        """A small file beside the spaces (``ACTIVE_SPACE``, ``heads/…``); None when there is none."""
        try:
            return (self._space(name)).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the index store: {exc.strerror or type(exc).__name__}") from exc

    def file_write(self, name: str, data: bytes) -> None:
        path = self._space(name)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"cannot write the index store: {exc.strerror or type(exc).__name__}") from exc

    def pointer_read(self, space: str) -> Manifest | None:
        directory = self._space(space)
        try:
            version = published_version(directory)
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the index store: {exc.strerror or type(exc).__name__}") from exc
        if version is None:
            return None
        # The build's own meta.json records every data file's size and checksum; meta.json itself is
        # checked by being read whole and naming the version.
        meta = build_meta_read(directory / BUILDS_DIR / version, version)
        names = set(meta.files) or {INDEX_FILE, ITEMS_FILE}
        files: dict[str, tuple[int | None, str | None]] = {
            name: (int(meta.files[name]["bytes"]), str(meta.files[name]["blake2b"]))
            if name in meta.files
            else (None, None)
            for name in names
        }
        files[META_FILE] = (None, None)
        return manifest_check(Manifest(version=version, files=files))

    def download(self, space: str, version: str, name: str, dest: Path) -> None:
        source = self._space(space) / BUILDS_DIR / version / name
        try:
            shutil.copyfile(source, dest)
        except FileNotFoundError as exc:
            raise IndexCorrupt(f"index build {version} is incomplete in the store: no {name}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the index store: {exc.strerror or type(exc).__name__}") from exc

    def publish(self, space: str, build: Path, manifest: Manifest, *, keep: int) -> None:
        directory = self._space(space)
        builds = directory / BUILDS_DIR
        final = builds / manifest.version
        try:
            builds.mkdir(parents=True, exist_ok=True)
            if not final.is_dir():
                tmp = builds / f".tmp-{manifest.version}-{uuid.uuid4().hex[:6]}"
                tmp.mkdir()
                try:
                    for name in manifest.files:
                        _copy_synced(build / name, tmp / name)
                    tmp.rename(final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                _fsync_dir(builds)
            pointer_publish(directory, manifest.version)
            builds_prune(builds, keep=keep, current=manifest.version)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write the index store: {exc.strerror or type(exc).__name__}") from exc


class S3Store:
    """An S3-compatible bucket: ``<prefix><space>/builds/<version>/<file>``, pointer ``<prefix><space>/CURRENT.json``.

    ``bucket`` is a boto3 ``Bucket`` resource (django-storages' ``S3Storage(...).bucket``). S3 makes a
    PUT of one object atomic: a reader gets the old pointer or the new one, never a mix.
    """

    kind = "s3"

    def __init__(self, bucket: object, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix

    def _key(self, space: str, *parts: str) -> str:
        return "/".join([f"{self.prefix}{space}", *parts])

    @contextlib.contextmanager
    def _errors(self, doing: str, *, version: str = "", name: str = "") -> Iterator[None]:
        # Imported lazily: botocore is optional (requirements-s3.txt), needed by an S3 store only.
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if name and code in {"404", "NoSuchKey", "NotFound"}:
                raise IndexCorrupt(f"index build {version} is incomplete in the store: no {name}") from exc
            raise StoreUnavailable(f"cannot {doing} the index store ({code or 'error'})") from exc
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"cannot {doing} the index store ({type(exc).__name__})") from exc

    def file_read(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError  # lazily, as in _errors

        try:
            with self._errors("read"):
                return self.bucket.Object(f"{self.prefix}{name}").get()["Body"].read()
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise

    def file_write(self, name: str, data: bytes) -> None:
        with self._errors("write"):
            self.bucket.Object(f"{self.prefix}{name}").put(Body=data)

    def pointer_read(self, space: str) -> Manifest | None:
        body = self.file_read(self._key(space, MANIFEST_NAME)[len(self.prefix) :])
        if body is None:
            return None
        try:
            raw = json.loads(body)
            files = {str(n): (int(f["bytes"]), str(f["blake2b"])) for n, f in raw["files"].items()}
            manifest = Manifest(version=str(raw["version"]), files=files)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise IndexCorrupt("the store's pointer is unreadable") from exc
        return manifest_check(manifest)

    def download(self, space: str, version: str, name: str, dest: Path) -> None:
        with self._errors("read", version=version, name=name):
            self.bucket.Object(self._key(space, BUILDS_DIR, version, name)).download_file(str(dest))

    def publish(self, space: str, build: Path, manifest: Manifest, *, keep: int) -> None:
        with self._errors("write"):
            # Files first; the pointer last, so no reader ever follows it to a build still uploading.
            for name in sorted(manifest.files):
                self.bucket.Object(self._key(space, BUILDS_DIR, manifest.version, name)).upload_file(str(build / name))
            pointer = {
                "version": manifest.version,
                "files": {n: {"bytes": size, "blake2b": digest} for n, (size, digest) in manifest.files.items()},
            }
            self.bucket.Object(self._key(space, MANIFEST_NAME)).put(
                Body=json.dumps(pointer, indent=2).encode(), ContentType="application/json"
            )
            self._prune(space, keep=keep, current=manifest.version)

    def _prune(self, space: str, *, keep: int, current: str) -> None:
        """Delete builds older than the newest ``keep`` besides ``current`` (kept: nodes may still be fetching them)."""
        prefix = self._key(space, BUILDS_DIR) + "/"
        keys: dict[str, list[str]] = {}
        for summary in self.bucket.objects.filter(Prefix=prefix):
            version = summary.key[len(prefix) :].split("/", 1)[0]
            keys.setdefault(version, []).append(summary.key)
        older = sorted(v for v in keys if v != current and v < current)
        doomed = [key for version in older[: max(0, len(older) - keep)] for key in keys[version]]
        for start in range(0, len(doomed), 1000):
            self.bucket.delete_objects(Delete={"Objects": [{"Key": k} for k in doomed[start : start + 1000]]})


def _copy_synced(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)
    with dest.open("rb") as fh:
        os.fsync(fh.fileno())


# --- Publishing (the worker that built) ---------------------------------------------------


def build_publish(*, store: Store, space: str, local: Path, version: str, keep: int) -> Manifest:
    """Publish the whole local build ``version`` of ``local`` (a space's index directory) to ``store``.

    Checks the build against its own checksums first: a damaged build is never published.
    Raises StoreUnavailable (the previous pointer stays) or IndexCorrupt.
    """
    build = local / BUILDS_DIR / version
    build_files_verify(build, version, checksum=True)
    manifest = manifest_of(build, version)
    started = time.perf_counter()
    store.publish(space, build, manifest, keep=keep)
    logger.info("Published index %s to the %s store in %.1fs", version, store.kind, time.perf_counter() - started)
    return manifest


def build_publish_pending(*, store: Store, space: str, local: Path, keep: int) -> str | None:
    """Publish the local build when it is newer than the store's (an earlier publish failed); its version, else None."""
    version = published_version(local)
    if version is None:
        return None
    manifest = store.pointer_read(space)
    if manifest is not None and manifest.version >= version:
        return None
    build_publish(store=store, space=space, local=local, version=version, keep=keep)
    return version


# --- Fetching (every node) ---------------------------------------------------------------


@dataclass
class DeliveryState:
    """What a node's fetcher last found, as ``DELIVERY.json`` holds it (one writer: ``index_fetch``)."""

    store: str
    published: str | None = None  # the store's version at the last successful look
    serving: str | None = None  # the node's own CURRENT
    checked_at: str | None = None  # the last look at the store, successful or not
    ok_at: str | None = None  # the last look that found the node serving the store's build
    fetched_at: str | None = None
    fetch_seconds: float | None = None
    fetch_bytes: int | None = None
    error: str | None = None
    failing_since: str | None = None
    failures: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # version -> why its copy was not switched to
    retry_at: str | None = None  # when the refused build may be downloaded again
    fetching: bool = False  # a look that found a newer build is downloading it now


def delivery_state_read(local: Path, *, store: str) -> DeliveryState:
    try:
        raw = json.loads((local / STATUS_FILE).read_text())
        return DeliveryState(**{k: v for k, v in raw.items() if k in DeliveryState.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return DeliveryState(store=store)


def _state_write(local: Path, state: DeliveryState) -> None:
    tmp = local / f".{STATUS_FILE}.{uuid.uuid4().hex}"
    try:
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(local / STATUS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def _node_lock(local: Path) -> Iterator[bool]:
    """The node's fetch lock (one fetch per INDEX_DIR, whatever the number of processes); False when taken."""
    local.mkdir(parents=True, exist_ok=True)
    fd = os.open(local / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _download(store: Store, space: str, manifest: Manifest, builds: Path) -> tuple[Path, int]:
    """Download build ``manifest.version`` into a hidden folder of ``builds`` and verify every byte; (folder, bytes)."""
    version = manifest.version
    tmp = builds / f"{FETCHING_PREFIX}{version}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        total = 0
        digests: dict[str, str] = {}
        for name, (size, digest) in sorted(manifest.files.items()):
            store.download(space, version, name, tmp / name)
            got = (tmp / name).stat().st_size
            total += got
            if size is not None and got != size:
                raise IndexCorrupt(f"index build {version}: {name} is {got} bytes in the store, {size} published")
            digests[name] = _file_digest(tmp / name)  # one read of each file serves both records
            if digest is not None and digests[name] != digest:
                raise IndexCorrupt(f"index build {version}: {name} fails its checksum")
        # And against the build's own record (meta.json), as the sweep checks a published build.
        meta = build_meta_read(tmp, version)
        for name, (size, digest) in _recorded_files(meta, tmp).items():
            if name not in digests:
                raise IndexCorrupt(f"index build {version}: the store's pointer does not list {name}")
            if (tmp / name).stat().st_size != size or (digest is not None and digests[name] != digest):
                raise IndexCorrupt(f"index build {version}: {name} fails its checksum")
        for name in manifest.files:
            with (tmp / name).open("rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, total


def _local_whole(local: Path, version: str) -> bool:
    """Whether the node holds build ``version`` with every file its published size (no checksum pass)."""
    try:
        index_files_verify(local, version, checksum=False)
    except IndexCorrupt:
        return False
    return True


def index_fetch(*, store: Store, space: str, local: Path, keep: int) -> DeliveryState | None:
    """Bring the node's copy of ``space`` (index directory ``local``) to the store's published build.

    Never raises for a store or build fault: the node keeps serving what it has and the
    reason is recorded in ``DELIVERY.json`` (returned). Only moves forward: a store pointer
    older than the node's build is not followed. Returns None when another process of this
    node is fetching (it records the outcome).
    """
    with _node_lock(local) as held:
        if not held:
            return None
        builds = local / BUILDS_DIR
        builds.mkdir(parents=True, exist_ok=True)
        for leftover in builds.glob(f"{FETCHING_PREFIX}*"):  # a fetch killed midway: the lock says none runs now
            shutil.rmtree(leftover, ignore_errors=True)
        state = delivery_state_read(local, store=store.kind)
        state.store = store.kind
        serving = published_version(local)
        state.checked_at = _now()
        try:
            manifest = store.pointer_read(space)
            if manifest is None or (serving is not None and manifest.version < serving):
                state.published = manifest.version if manifest else None
            elif manifest.version == serving and _local_whole(local, serving):
                state.published = serving
            elif manifest.version in state.refused and not _retry_due(state):
                # The same damaged build again: not downloaded on every look (a large build costs a full copy).
                state.published = manifest.version
                raise IndexCorrupt(state.refused[manifest.version])
            else:
                state.published, state.fetching = manifest.version, True
                _state_write(local, state)  # "fetching": the other processes of the node see why it is behind
                _switch(store=store, space=space, local=local, manifest=manifest, state=state)
                serving = manifest.version
                builds_prune(builds, keep=keep, current=serving)
        except (StoreUnavailable, IndexCorrupt, OSError) as exc:
            if state.error is None:
                state.failing_since = state.checked_at
            reason = str(exc)
            if isinstance(exc, OSError):  # this node's own disk (full, read-only): not the store's fault
                reason = f"cannot write this node's copy: {exc.strerror or type(exc).__name__}"
            if os.sep in reason:  # an OS message naming a path: the log has it, the status page does not
                reason = f"index build {state.published} is damaged or incomplete in the store"
            state.error = reason
            state.failures += 1
            if isinstance(exc, IndexCorrupt) and state.published:
                if state.published not in state.refused or _retry_due(state):
                    wait = min(REFUSED_RETRY_S * 2 ** (state.failures - 1), REFUSED_RETRY_MAX_S)
                    state.retry_at = (datetime.now(tz=UTC) + timedelta(seconds=wait)).isoformat()
                state.refused = {state.published: reason}
            else:
                state.refused = {}
            logger.error("Index delivery: keeping build %s: %s", serving, exc)
        else:
            state.error, state.failing_since, state.failures, state.refused, state.retry_at = None, None, 0, {}, None
            state.ok_at = state.checked_at
        state.serving, state.fetching = serving, False
        _state_write(local, state)
        return state


# A build refused for damage is downloaded again after this long, doubling per failure up to REFUSED_RETRY_MAX_S.
REFUSED_RETRY_S = 30.0
REFUSED_RETRY_MAX_S = 900.0


def _retry_due(state: DeliveryState) -> bool:
    """Whether a refused build may be downloaded again (``retry_at`` passed)."""
    return state.retry_at is None or datetime.now(tz=UTC) >= datetime.fromisoformat(state.retry_at)


def _switch(*, store: Store, space: str, local: Path, manifest: Manifest, state: DeliveryState) -> None:
    """Download, verify, rename into ``builds/`` and flip ``CURRENT``; the previous build serves until the flip."""
    version = manifest.version
    builds = local / BUILDS_DIR
    started = time.perf_counter()
    tmp, total = _download(store, space, manifest, builds)
    final = builds / version
    if final.exists():
        # A damaged earlier copy: moved aside (processes mapping it keep their files) and dropped.
        aside = builds / f"{FETCHING_PREFIX}old-{version}-{uuid.uuid4().hex[:6]}"
        final.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp.rename(final)
    _fsync_dir(builds)
    pointer_publish(local, version)
    state.fetched_at = _now()
    state.fetch_seconds = round(time.perf_counter() - started, 3)
    state.fetch_bytes = total
    logger.info(
        "Fetched index %s (%d bytes) from the %s store in %.1fs", version, total, store.kind, state.fetch_seconds
    )


def _version_time(version: str | None) -> datetime | None:
    """The build time a version's name starts with (``index_build`` names builds by it)."""
    if not version:
        return None
    try:
        return datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def delivery_report(state: DeliveryState, *, interval_s: float) -> dict[str, object]:
    """The node's delivery as /api/status shows it: what the store publishes, what the node serves, why not."""
    now = datetime.now(tz=UTC)
    published, serving = _version_time(state.published), _version_time(state.serving)
    checked = datetime.fromisoformat(state.checked_at) if state.checked_at else None
    behind = bool(state.published and state.published != state.serving and (state.serving or "") < state.published)
    return {
        "store": state.store,
        "published": state.published,
        "serving": state.serving,
        "behind": behind,
        # How much older the served build is than the published one (0 when current).
        "build_lag_seconds": round((published - serving).total_seconds(), 1) if behind and published and serving else 0,
        "checked_at": state.checked_at,
        "checked_seconds_ago": round((now - checked).total_seconds(), 1) if checked else None,
        # The fetcher looks every interval: much longer without a look means it is stuck or not running.
        "checking": bool(checked and (now - checked).total_seconds() <= 3 * interval_s + 30),
        # A download in progress: the look's outcome (error or switch) is not known yet. A fetch
        # killed midway leaves the flag behind; the next look (the lock says none runs) clears it.
        "fetching": state.fetching,
        "fetched_at": state.fetched_at,
        "fetch_seconds": state.fetch_seconds,
        "error": state.error,
        "failing_since": state.failing_since,
    }
