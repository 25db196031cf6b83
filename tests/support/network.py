"""No network in a test: only this machine's own services answer; torch's and torchvision's downloads fail."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("tried to reach the network")


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _loopback_only(real):  # noqa: ANN001, ANN202
    """``real`` for this machine's own services (the test Redis), the failing stand-in for anything else."""

    def call(*args: object, **kwargs: object) -> object:
        target = args[1] if real is _REAL_CONNECT else args[0]
        host = target[0] if isinstance(target, tuple) else target
        if isinstance(host, str) and (host in _LOOPBACK or host.startswith("/")):
            return real(*args, **kwargs)
        return _forbidden()

    return call


_REAL_CONNECT = socket.socket.connect


@contextlib.contextmanager
def network_forbidden() -> Iterator[None]:
    """Within the block, sockets reach loopback only and torch's download functions fail the test."""
    import torch  # only the tests that load encoders pay for importing torch
    import torchvision

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _loopback_only(_REAL_CONNECT))
        mp.setattr(socket, "create_connection", _loopback_only(socket.create_connection))
        mp.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo))
        mp.setattr(torch.hub, "download_url_to_file", _forbidden)
        mp.setattr(torch.hub, "load_state_dict_from_url", _forbidden)
        mp.setattr(torchvision.models._api, "load_state_dict_from_url", _forbidden)
        yield
