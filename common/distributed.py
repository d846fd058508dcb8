"""Launching several training processes on one machine (``torchrun`` with the gloo backend).

The processes meet through a TCP store at ``MASTER_ADDR:MASTER_PORT``, then gloo opens its own
connections on a network interface. On one machine both should stay on the loopback interface;
the defaults do not everywhere:

* gloo picks its interface by resolving the machine's host name, which can hang or give an
  unreachable address (macOS, machines on a VPN): ``GLOO_SOCKET_IFNAME`` names the loopback
  interface instead (``lo`` on Linux, ``lo0`` on macOS);
* from PyTorch 2.4 on, the TCP store uses libuv by default, and the Windows builds have no libuv:
  ``torchrun`` stops with "use_libuv was requested but PyTorch was build without libuv support"
  unless ``USE_LIBUV=0``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

LOOPBACK_INTERFACES = {"linux": "lo", "darwin": "lo0"}  # by sys.platform


def local_launch_env(base: Mapping[str, str] | None = None, platform: str | None = None) -> dict[str, str]:
    """The environment for ``torchrun`` processes that all run on this machine.

    ``base`` (default ``os.environ``) is copied, not changed; ``platform`` defaults to
    ``sys.platform``. Sets ``MASTER_ADDR=127.0.0.1``, ``GLOO_SOCKET_IFNAME`` to the loopback
    interface on Linux and macOS, and ``USE_LIBUV=0`` on Windows. Settings already in ``base``
    for the interface and libuv are kept, so a user can override them.
    """
    env = dict(os.environ if base is None else base)
    platform = sys.platform if platform is None else platform
    if not isinstance(platform, str) or not platform:
        raise ValueError(f"platform must be a sys.platform name such as 'linux', 'darwin' or 'win32', got {platform!r}.")
    env["MASTER_ADDR"] = "127.0.0.1"
    if platform in LOOPBACK_INTERFACES:
        env.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACES[platform])
    if platform.startswith(("win32", "cygwin")):
        env.setdefault("USE_LIBUV", "0")
    return env
