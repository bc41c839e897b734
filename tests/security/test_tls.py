"""--tls-cert/--tls-key: the server speaks wss:// and https:// itself."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cpc_signaling.client import Client

from ..helpers import new_id


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_wss_and_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpc_signaling", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "CPC_TLS_CERT": str(cert),
            "CPC_TLS_KEY": str(key),
            "PYTHONUNBUFFERED": "1",
        },
    )
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 15)
            assert line, "server exited"
            match = re.search(r"wss://\S+", line)
            url = match.group(0) if match else ""
        https = url.replace("wss://", "https://").removesuffix("/ws")
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(f"{https}/healthz") as response:
                assert response.status == 200
            a_user, b_user, doc = new_id(), new_id(), new_id()
            async with (
                Client(url, a_user, session=session, reconnect=False) as a,
                Client(url, b_user, session=session, reconnect=False) as b,
            ):
                await a.join(doc)
                await b.join(doc)
                await b.cursor(doc, 1, 2)
                got = await a.receive(5)
                assert getattr(got, "user_id", None) == b_user
        # Plain ws:// on the TLS port does not get a WebSocket.
        plain = url.replace("wss://", "ws://")
        async with aiohttp.ClientSession() as session:
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                await session.ws_connect(plain, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        # A client that does not trust the certificate is refused by its own TLS check.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{https}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await loop.run_in_executor(None, proc.wait, 10)
        assert code == 0
