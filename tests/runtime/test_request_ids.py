"""Request ids: random (no counter to read a server's volume from), 32 hex digits, and a forked
child does not hand out its parent's."""

from __future__ import annotations

import os
import string

from dynamo.runtime.names import new_request_id


def test_request_ids_are_unique_hex_of_uuid_length() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and set(i) <= set(string.hexdigits.lower()) for i in ids)


def test_ids_show_no_counter() -> None:
    a, b = new_request_id(), new_request_id()
    assert a[:16] != b[:16] and a[16:] != b[16:]


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_request_id()  # the pool now holds bytes both would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave without running pytest's teardown
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent_next = new_request_id()
    assert len(child) == 32
    assert child != parent_next
