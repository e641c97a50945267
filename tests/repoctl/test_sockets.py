import os
import socket

import pytest
from repoctl.sockets import is_loopback, listeners


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_listening_socket_of_this_process_is_found_with_its_address(family, host):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        assert (os.getpid(), host, port) not in listeners([os.getpid()]), "bound but not listening yet"
        sock.listen()
        assert (os.getpid(), host, port) in listeners([os.getpid()])


def test_a_process_that_is_gone_has_no_sockets():
    assert listeners([2**22 + 12345]) == []


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("::ffff:10.0.0.5", False)],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback
