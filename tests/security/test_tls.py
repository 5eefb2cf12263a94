"""TLS for the API: `llmos up --tls-cert --tls-key` serves HTTPS only; clients (CLI, SDK,
and jobs calling back) verify the certificate."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from live import LiveDaemon, free_port, program


def self_signed(folder) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmos test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_api_over_tls_for_clients_the_cli_and_jobs(tmp_path):
    cert, key = self_signed(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_TLS_CERT": cert, "LLMOS_TLS_KEY": key}, ca=cert).start()
    try:
        assert live.url.startswith("https://")
        assert live.client.whoami()["name"] == "admin"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP next to HTTPS
            httpx.get(live.url.replace("https", "http") + "/healthz", timeout=5)
        out = tmp_path / "whoami.json"
        job = live.client.jobs.submit(program("whoami"), {"out": str(out)})
        assert live.wait_job(job["id"])["state"] == "SUCCEEDED"
        assert json.loads(out.read_text())["me"]["job_id"] == job["id"]
        env = live.cli_env()
        untrusted = cli(env, "whoami")
        assert untrusted.returncode == 1 and "certificate is not trusted" in untrusted.stderr
        trusted = cli({**env, "LLMOS_CA_BUNDLE": cert}, "whoami")
        assert trusted.returncode == 0 and "admin" in trusted.stdout
    finally:
        live.stop()


def test_a_bad_certificate_or_key_stops_llmos_up_with_a_message(tmp_path):
    cert, key = self_signed(tmp_path)
    env = {"LLMOS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    port = str(free_port())
    only_cert = cli({**env, "LLMOS_TLS_CERT": cert}, "up", "--port", port)
    assert only_cert.returncode == 2 and "needs both a certificate and its key" in only_cert.stderr
    swapped = cli(env, "up", "--port", port, "--tls-cert", key, "--tls-key", cert)
    assert swapped.returncode == 2 and "do not load" in swapped.stderr
    missing = cli(env, "up", "--port", port, "--tls-cert", cert, "--tls-key", "/nope.pem")
    assert missing.returncode == 2 and "no TLS key file at /nope.pem" in missing.stderr
