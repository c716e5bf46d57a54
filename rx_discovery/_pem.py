"""Client certificates from memory: the ssl module loads them from a path only."""

from __future__ import annotations

import os
import ssl
import tempfile

__all__ = ["load_cert_chain"]


def load_cert_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """Load a certificate and its key (PEM, concatenated) into ``context`` from memory: an
    anonymous in-memory file where Linux has them, else a private temporary file removed at
    once."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("rx-discovery-client-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="rx-discovery-") as folder:
        path = os.path.join(folder, "client.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(pem)
        context.load_cert_chain(path)
