"""Gateway benchmark: ours vs nginx (mTLS + proxy_pass) vs the demo backend directly.

One run on loopback, bounded load (`ab`, a C load generator, pinned to core 1; gateway, nginx
and backend pinned to core 0), the client presenting its certificate, logged in, keep-alive:

1. proxied requests/s and p50/p99: ours, nginx, direct; ratios ours/nginx and ours/direct;
2. full TLS handshakes with a client certificate per second (no keep-alive): ours vs nginx;
3. revocation propagation: `sekisho-ca revoke` returns -> the live session is refused;
4. proxied p99 while 20 logins (real OWASP argon2id) run at once.

    .venv/bin/python bench/gateway.py [--requests 20000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import ROOT, Daemon, free_port, make_ca, median

PASSWORD = "kj3h5gq8Wz"
CPU_SERVER, CPU_LOAD = "0", "1"


def _pinned(command: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


def _api(config: dict, method: str, path: str, body: dict | None = None) -> dict:
    token = Path(config["token_file"]).read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
        config["internal"] + path, method=method, data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        return dict(json.loads(response.read()))


def _users(config_path: Path, ca: dict, user_ids: list[str], folder: Path,
           role: str) -> list[Path]:
    """Create users with PASSWORD, acquire certificates, write cert+key PEM files for ab -E."""
    script = textwrap.dedent(f"""
        import asyncio, pathlib
        from common.passwords import PasswordHasher
        from gateway.auth import Authenticator
        from gateway.config import load_gateway_config
        from gateway.users import UserStore
        from policy.clock import SystemClock
        async def main():
            config = load_gateway_config(pathlib.Path({str(config_path)!r}))
            store = await UserStore.open(config.database, SystemClock())
            hasher = PasswordHasher(workers=1)
            auth = Authenticator(store, hasher, config.password, clock=SystemClock())
            for user_id in {user_ids!r}:
                _, temporary = await auth.add_user(user_id, name="Bench User",
                    customer="Bench Co", role={role!r}, actor="bench")
                result = await auth.change_password(user_id, temporary, {PASSWORD!r})
                assert result.status.value == "changed", result
            await store.close(); hasher.close()
        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT,
                   stderr=subprocess.DEVNULL)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    paths = []
    for user_id in user_ids:
        acquisition = _api(ca, "POST", f"/v1/users/{user_id}/acquisition-password")
        issued = _api(ca, "POST", "/v1/acquire", {
            "user_id": user_id, "acquisition_password": acquisition["acquisition_password"]})
        key, cert, _ = pkcs12.load_key_and_certificates(
            base64.b64decode(issued["pkcs12"]), acquisition["acquisition_password"].encode())
        assert key is not None
        assert cert is not None
        path = folder / f"{user_id}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        path.chmod(0o600)
        (folder / f"{user_id}.serial").write_text(issued["serial"])
        paths.append(path)
    return paths


class Client:
    """A tiny HTTPS client with a cookie dict (http.client, one keep-alive connection)."""

    def __init__(self, port: int, cert: Path) -> None:
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # the demo's self-signed server certificate
        self.context.load_cert_chain(cert)
        self.port = port
        self.cookies: dict[str, str] = {}
        self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=self.context,
                                                      timeout=60)

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, text

    def login(self, relogin: bool = False) -> int:
        from urllib.parse import urlencode

        _, page = self.request("GET", "/auth/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token, page[:300]
        form = {"csrf": token.group(1), "password": PASSWORD}
        if relogin:
            form["relogin"] = "1"
        status, _ = self.request("POST", "/auth/login", urlencode(form))
        return status


def ab(url: str, *, requests: int, concurrency: int, keepalive: bool, cert: Path | None,
       headers: dict[str, str]) -> dict[str, float]:
    """Run ab pinned to the load core; returns rps, p50, p99 (ms) and non-2xx count."""
    command = ["ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "30"]
    if keepalive:
        command.append("-k")
    if cert is not None:
        command += ["-E", str(cert)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(_pinned([*command, url], CPU_LOAD), capture_output=True,
                            text=True, timeout=600, check=False)
    out = result.stdout
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"ab failed: {result.stderr or out}")
    p50 = re.search(r"^\s+50%\s+(\d+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\d+)", out, re.M)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    return {"rps": float(rps.group(1)), "p50": float(p50.group(1)) if p50 else float("nan"),
            "p99": float(p99.group(1)) if p99 else float("nan"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "failed": float(failed.group(1)) if failed else 0.0}


def _nginx_conf(folder: Path, port: int, backend: int, tls_cert: Path, tls_key: Path,
                bundle: Path) -> Path:
    conf = folder / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {folder}/nginx.pid;
        error_log {folder}/nginx-error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
            server {{
                listen 127.0.0.1:{port} ssl;
                ssl_protocols TLSv1.2 TLSv1.3;
                ssl_certificate {tls_cert};
                ssl_certificate_key {tls_key};
                ssl_client_certificate {bundle};
                ssl_verify_client on;
                ssl_verify_depth 2;
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header X-Sekisho-User "bench1";
                    proxy_set_header X-Sekisho-Role "admin";
                    proxy_set_header X-Sekisho-Cert-Serial $ssl_client_serial;
                }}
            }}
        }}
    """))
    (folder / "nginx-temp").mkdir(exist_ok=True)
    return conf


def _wait_tls(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--handshakes", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("ab", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (Debian: apache2-utils, nginx-light)", file=sys.stderr)
            return 1
    gateway_port, backend_port, nginx_port = free_port(), free_port(), free_port()
    config_path = make_ca(kdf_rounds=2048, extra=f"""
        [gateway]
        listen = "127.0.0.1:{gateway_port}"
        public_url = "https://127.0.0.1:{gateway_port}"
        backend_url = "http://127.0.0.1:{backend_port}"
    """)
    folder = config_path.parent
    raw = tomllib.loads(config_path.read_text())
    public = f"http://{raw['ca']['public_listen']}"
    internal = f"http://{raw['ca']['internal_listen']}"
    with config_path.open("a") as handle:
        handle.write(f'ca_public_url = "{public}"\nca_internal_url = "{internal}"\n')
    ca_info = {"internal": internal, "token_file": str(folder / "var/secrets/ca-api-token")}
    processes: list[subprocess.Popen[bytes]] = []
    ca = Daemon(config_path, cpus=CPU_LOAD, stderr=folder / "ca.log")
    try:
        ca.wait_ready(public + "/health")
        backend = subprocess.Popen(
            _pinned([sys.executable, "-m", "demo", "--listen", f"127.0.0.1:{backend_port}"],
                    CPU_SERVER), cwd=ROOT, stderr=subprocess.DEVNULL)
        processes.append(backend)
        (bench_cert,) = _users(config_path, ca_info, ["bench1"], folder, "admin")
        login_certs = _users(config_path, ca_info, [f"login{i}" for i in range(20)], folder,
                             "contractor")
        revoke_certs = _users(config_path, ca_info, [f"rev{i}" for i in range(3)], folder,
                              "contractor")
        with (folder / "gateway.log").open("ab") as log:
            gateway = subprocess.Popen(
                _pinned([sys.executable, "-m", "gateway", "--config", str(config_path),
                         "serve"], CPU_SERVER), cwd=ROOT, stderr=log)
        processes.append(gateway)
        _wait_tls(gateway_port)
        bundle = folder / "var/gateway/trust-bundle.pem"
        nginx = subprocess.Popen(
            _pinned(["nginx", "-p", str(folder / "nginx-temp"), "-c",
                     str(_nginx_conf(folder, nginx_port, backend_port,
                                     folder / "var/gateway/tls/server.crt.pem",
                                     folder / "var/gateway/tls/server.key.pem", bundle))],
                    CPU_SERVER), cwd=folder, stderr=subprocess.DEVNULL)
        processes.append(nginx)
        _wait_tls(nginx_port)

        client = Client(gateway_port, bench_cert)
        assert client.login() == 303, "bench login failed"
        session = client.cookies["__Host-sekisho-session"]
        cookie = {"Cookie": f"__Host-sekisho-session={session}"}
        identity = {"X-Sekisho-User": "bench1", "X-Sekisho-Role": "admin"}
        n, c = args.requests, args.concurrency
        # Warm up every path, then measure each three times; report medians.
        ab(f"https://127.0.0.1:{gateway_port}/bench", requests=2000, concurrency=c,
           keepalive=True, cert=bench_cert, headers=cookie)
        ab(f"https://127.0.0.1:{nginx_port}/bench", requests=2000, concurrency=c,
           keepalive=True, cert=bench_cert, headers={})
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "nginx": [], "direct": []}
        for _ in range(3):
            runs["ours"].append(ab(f"https://127.0.0.1:{gateway_port}/bench", requests=n,
                                   concurrency=c, keepalive=True, cert=bench_cert,
                                   headers=cookie))
            runs["nginx"].append(ab(f"https://127.0.0.1:{nginx_port}/bench", requests=n,
                                    concurrency=c, keepalive=True, cert=bench_cert, headers={}))
            runs["direct"].append(ab(f"http://127.0.0.1:{backend_port}/bench", requests=n,
                                     concurrency=c, keepalive=True, cert=None,
                                     headers=identity))
        print(f"== proxied GET /bench (1 KiB), keep-alive, c={c}, n={n}, medians of 3")
        result = {name: {k: median([r[k] for r in rs]) for k in rs[0]}
                  for name, rs in runs.items()}
        for name, r in result.items():
            print(f"{name:7} {r['rps']:9.0f} req/s   p50 {r['p50']:.0f} ms  p99 {r['p99']:.0f} ms"
                  f"   non-2xx {r['non2xx']:.0f}")
        print(f"ratio ours/nginx {result['ours']['rps'] / result['nginx']['rps']:.2f}   "
              f"ours/direct {result['ours']['rps'] / result['direct']['rps']:.2f}"
              f"   (target ours/nginx >= 0.5)")

        print(f"== full TLS handshake with client certificate per request, c={c}")
        hs_ours = ab(f"https://127.0.0.1:{gateway_port}/bench", requests=args.handshakes,
                     concurrency=c, keepalive=False, cert=bench_cert, headers=cookie)
        hs_nginx = ab(f"https://127.0.0.1:{nginx_port}/bench", requests=args.handshakes,
                      concurrency=c, keepalive=False, cert=bench_cert, headers={})
        print(f"ours  {hs_ours['rps']:7.0f} handshakes+requests/s "
              f"(non-2xx {hs_ours['non2xx']:.0f})")
        print(f"nginx {hs_nginx['rps']:7.0f} handshakes+requests/s   "
              f"ratio {hs_ours['rps'] / hs_nginx['rps']:.2f}")

        print("== proxied p99 while 20 logins (OWASP argon2id) run at once")
        login_clients = [Client(gateway_port, cert) for cert in login_certs]
        statuses: list[int] = []
        barrier = threading.Barrier(21)

        def do_login(one: Client) -> None:
            barrier.wait()
            statuses.append(one.login())

        threads = [threading.Thread(target=do_login, args=(one,)) for one in login_clients]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.monotonic()
        busy = ab(f"https://127.0.0.1:{gateway_port}/bench", requests=max(2000, n // 4),
                  concurrency=c, keepalive=True, cert=bench_cert, headers=cookie)
        for thread in threads:
            thread.join()
        logins_took = time.monotonic() - started
        print(f"during logins: {busy['rps']:.0f} req/s p50 {busy['p50']:.0f} ms "
              f"p99 {busy['p99']:.0f} ms (idle p99 {result['ours']['p99']:.0f} ms); "
              f"20 logins done in {logins_took:.2f} s, statuses {sorted(set(statuses))}")

        print("== revocation propagation: `sekisho-ca revoke` returns -> session refused")
        delays = []
        for attempt, cert in enumerate(revoke_certs):
            user_id = f"rev{attempt}"
            victim = Client(gateway_port, cert)
            assert victim.login() == 303
            assert victim.request("GET", "/bench")[0] == 200
            serial = (folder / f"{user_id}.serial").read_text()
            subprocess.run([sys.executable, "-m", "ca", "--config", str(config_path),
                            "revoke", "--serial", serial, "--reason", "keyCompromise"],
                           check=True, cwd=ROOT, capture_output=True)
            returned = time.monotonic()
            while victim.request("GET", "/bench")[0] != 403:
                if time.monotonic() - returned > 10:
                    raise RuntimeError("revocation not enforced within 10 s")
                time.sleep(0.01)
            delays.append(time.monotonic() - returned)
        print(f"revoke -> 403 on the live session: {', '.join(f'{d * 1000:.0f}' for d in delays)}"
              f" ms (median {median(delays) * 1000:.0f} ms; target <= 2000 ms)")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        ca.stop()
        if os.environ.get("SEKISHO_BENCH_KEEP") is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
