"""Throwaway certificates for the security tests (trustme): one CA signs the servers' certificate
(for 127.0.0.1 and localhost) and a client certificate (for mutual TLS); a second CA signs nothing
here, so a peer that trusts only it must refuse ours."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN dynamo-client
    client_key: Path
    other_ca: Path  # an unrelated CA


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="localhost")
    client = ca.issue_cert("dynamo-client", common_name="dynamo-client")
    paths = Certs(
        ca=root / "ca.pem",
        server_cert=root / "server.pem",
        server_key=root / "server-key.pem",
        client_cert=root / "client.pem",
        client_key=root / "client-key.pem",
        other_ca=root / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    server.private_key_pem.write_to_path(str(paths.server_key))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(paths.server_cert), append=True)
    client.private_key_pem.write_to_path(str(paths.client_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    return paths
