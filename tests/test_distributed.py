import socket
import sys

import pytest

from common import distributed


@pytest.mark.parametrize("platform, ifname, libuv", [("linux", "lo", None), ("darwin", "lo0", None),
                                                     ("win32", None, "0")])
def test_local_launch_env_per_platform(platform, ifname, libuv):
    base = {"PATH": "/bin", "MASTER_ADDR": "myhost.local"}
    env = distributed.local_launch_env(base, platform)
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["PATH"] == "/bin"
    assert env.get("GLOO_SOCKET_IFNAME") == ifname
    assert env.get("USE_LIBUV") == libuv
    assert base == {"PATH": "/bin", "MASTER_ADDR": "myhost.local"}  # the caller's mapping is untouched


def test_local_launch_env_keeps_user_settings():
    env = distributed.local_launch_env({"GLOO_SOCKET_IFNAME": "eth0", "USE_LIBUV": "1"}, "linux")
    assert env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert distributed.local_launch_env({"USE_LIBUV": "1"}, "win32")["USE_LIBUV"] == "1"
    with pytest.raises(ValueError, match="sys.platform name"):
        distributed.local_launch_env({}, "")


@pytest.mark.skipif(sys.platform not in distributed.LOOPBACK_INTERFACES, reason="no loopback name known here")
def test_loopback_interface_exists_on_this_machine():
    names = [name for _, name in socket.if_nameindex()]
    assert distributed.LOOPBACK_INTERFACES[sys.platform] in names
    assert distributed.local_launch_env()["GLOO_SOCKET_IFNAME"] in names
