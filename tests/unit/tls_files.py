"""Certificate files for the config tests: issued by a throwaway trustme CA, written where a
config file names them (never committed: every test writes its own into a tmp directory)."""

from __future__ import annotations

from pathlib import Path

import trustme

_CA = trustme.CA()


def write_certificate(directory: Path, cert: str, key: str, *names: str) -> tuple[str, str]:
    """A certificate chain for ``names`` at ``directory/cert`` and its key at ``directory/key``
    (relative paths, parent folders made); returns both paths resolved, as the loader gives them.
    """
    issued = _CA.issue_cert(*(names or ("localhost",)))
    cert_path, key_path = directory / cert, directory / key
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key_path.write_bytes(issued.private_key_pem.bytes())
    return str(cert_path), str(key_path)
