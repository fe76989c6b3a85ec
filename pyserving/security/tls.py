"""TLS for the HTTP listeners (REST, metrics) from TF Serving's SSLConfig: TLS 1.2 or newer, optional mutual TLS."""

from __future__ import annotations

import os
import ssl
import tempfile

from pyserving.options import TlsOptions


def server_ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """A server context for `tls`. Its PEM text is written to a private temporary directory only as long as
    OpenSSL needs to read it (load_cert_chain takes paths, not text)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="pyserving-tls-") as directory:
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert, tls.server_cert), (key, tls.server_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="ascii") as f:
                f.write(text)
        context.load_cert_chain(cert, key)
    if tls.custom_ca:
        context.load_verify_locations(cadata=tls.custom_ca)
    if tls.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
    return context
