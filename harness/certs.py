"""A throwaway CA with server and client certificates, made with openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certs(directory: Path, server_name: str) -> Path:
    """ca.pem; server.pem/.key for `server_name`; client.pem/.key. Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=syncd test CA",
    )
    for name, cn, usage in (
        ("server", server_name, "serverAuth"),
        ("client", "syncd", "clientAuth"),
    ):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (directory / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{cn}\nextendedKeyUsage={usage}\n"
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return directory
