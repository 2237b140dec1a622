"""Gateway benchmark: ours vs nginx (mTLS + proxy_pass) vs the demo backend directly.

One run on loopback, bounded load (`ab`, a C load generator, pinned to core 1; gateway, nginx
and backend pinned to core 0, the CA on core 1), the client presenting its certificate,
logged in, keep-alive on both hops (client -> proxy, proxy -> backend):

1. proxied requests/s and p50/p99: ours, nginx, direct; ratios ours/nginx and ours/direct;
2. full TLS handshakes with a client certificate per second (no keep-alive): ours vs nginx;
3. proxied p99 while 20 logins (real OWASP argon2id) run at once;
4. revocation propagation: `sekisho-ca revoke` returns -> the live session is refused.

How each side is pinned and configured is printed first (read back from /proc, not assumed),
and for every keep-alive run the CPU microseconds per request of the proxy and of the backend
(from /proc: what each side costs, apart from scheduling), the number of keep-alive requests
`ab` saw and the number of new TCP connections to the backend during the run (0: the proxy
reused its upstream connections).

    .venv/bin/python bench/gateway.py [--requests 20000] [--concurrency 16]

`proxied_request_cost(cutover_config)` (used by bench/campaign.py) runs two of our gateways
on one CA and backend, one with the given `[[cutover]]` tables, and returns the mean seconds
per proxied request of each, measured interleaved under the same load.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import ROOT, Daemon, free_port, make_ca, median, pinned, run_ab

PASSWORD = "kj3h5gq8Wz"
# What the backend gets from a gateway (ours sends these; nginx is configured to), sent
# directly, so that the backend does the same work in all three measurements.
DIRECT_HEADERS = {
    "X-Sekisho-User": "bench1", "X-Sekisho-Role": "admin", "X-Sekisho-Customer": "Bench%20Co",
    "X-Sekisho-Name": "Bench%20User", "X-Sekisho-Last-Login": "2026-01-05T09:01:41.123456+00:00",
    "X-Sekisho-Cert-Serial": "5a0c1b0e2f", "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "https", "X-Forwarded-Host": "127.0.0.1",
}
CPU_SERVER, CPU_LOAD = "0", "1"
BENCH_USER = "bench1"


def _api(config: dict[str, str], method: str, path: str, body: dict[str, str] | None = None
         ) -> dict[str, str]:
    token = Path(config["token_file"]).read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
        config["internal"] + path, method=method, data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        return dict(json.loads(response.read()))


def _users(config_path: Path, ca: dict[str, str], user_ids: list[str], folder: Path,
           role: str) -> list[Path]:
    """Create users with PASSWORD, acquire certificates, write cert+key PEM files for ab -E."""
    if not user_ids:
        return []
    script = textwrap.dedent(f"""
        import asyncio, pathlib
        from common.passwords import PasswordHasher
        from gateway.auth import Authenticator
        from gateway.config import load_gateway_config
        from gateway.store import open_user_store
        from policy.clock import SystemClock
        async def main():
            config = load_gateway_config(pathlib.Path({str(config_path)!r}))
            store = await open_user_store(config, SystemClock())
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
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    def close(self) -> None:
        self.connection.close()


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
            upstream backend {{
                server 127.0.0.1:{backend};
                keepalive 32;
                keepalive_requests 1000000;
            }}
            server {{
                listen 127.0.0.1:{port} ssl;
                ssl_protocols TLSv1.2 TLSv1.3;
                ssl_certificate {tls_cert};
                ssl_certificate_key {tls_key};
                ssl_client_certificate {bundle};
                ssl_verify_client on;
                ssl_verify_depth 2;
                keepalive_requests 1000000;
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    # The same header set ours sends, so that the backend does the same work
                    # for both (identity values fixed: nginx has no session).
                    proxy_set_header X-Sekisho-User "{BENCH_USER}";
                    proxy_set_header X-Sekisho-Role "admin";
                    proxy_set_header X-Sekisho-Customer "Bench%20Co";
                    proxy_set_header X-Sekisho-Name "Bench%20User";
                    proxy_set_header X-Sekisho-Last-Login "2026-01-05T09:01:41.123456+00:00";
                    proxy_set_header X-Sekisho-Cert-Serial $ssl_client_serial;
                    proxy_set_header X-Forwarded-For $remote_addr;
                    proxy_set_header X-Forwarded-Proto https;
                    proxy_set_header X-Forwarded-Host $http_host;
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


# -- what the processes really run on (read back from /proc) -----------------------------------


def _cpus(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "?"
    found = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
    return found.group(1) if found else "?"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def _client_ports_to(port: int) -> set[int]:
    """Local ports of every TCP socket (any state, TIME_WAIT included) talking to `port`."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, remote = line.split()[1:3]
                if int(remote.rsplit(":", 1)[1], 16) == port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One of our gateways, running, with the bench user logged in."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path
    cookie: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class Stack:
    """CA (core 1) + demo backend (core 0) + our gateways and nginx (core 0) on loopback."""

    def __init__(self, *, logins: int = 0, revokes: int = 0) -> None:
        self.logins = logins
        self.revokes = revokes
        self.backend_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.gateways: list[Gateway] = []
        self.nginx_port = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.login_certs: list[Path] = []
        self.revoke_certs: list[Path] = []
        self._first_port = free_port()
        self._ca: Daemon | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Stack:
        self._stack.callback(self._stop)
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()

    def _gateway_section(self, port: int) -> str:
        return textwrap.dedent(f"""
            [gateway]
            listen = "127.0.0.1:{port}"
            public_url = "https://127.0.0.1:{port}"
            backend_url = "http://127.0.0.1:{self.backend_port}"
            ca_public_url = "{self.ca_public}"
            ca_internal_url = "{self.ca_internal}"
            ca_root = "var/keys/root.crt.pem"
        """)

    def _start(self) -> None:
        self.config_path = make_ca(kdf_rounds=2048)
        self.folder = self.config_path.parent
        self._base_config = self.config_path.read_text()
        raw = tomllib.loads(self._base_config)
        self.ca_public = f"http://{raw['ca']['public_listen']}"
        self.ca_internal = f"http://{raw['ca']['internal_listen']}"
        self.config_path.write_text(self._base_config + self._gateway_section(self._first_port))
        self._ca = Daemon(self.config_path, cpus=CPU_LOAD, stderr=self.folder / "ca.log")
        self._ca.wait_ready(self.ca_public + "/health")
        self.backend = self._spawn([sys.executable, "-m", "demo", "--listen",
                                    f"127.0.0.1:{self.backend_port}"], "backend.log")
        ca_info = {"internal": self.ca_internal,
                   "token_file": str(self.folder / "var/secrets/ca-api-token")}
        (self.bench_cert,) = _users(self.config_path, ca_info, [BENCH_USER], self.folder,
                                    "admin")
        self.login_certs = _users(self.config_path, ca_info,
                                  [f"login{i}" for i in range(self.logins)], self.folder,
                                  "contractor")
        self.revoke_certs = _users(self.config_path, ca_info,
                                   [f"rev{i}" for i in range(self.revokes)], self.folder,
                                   "contractor")

    def _spawn(self, command: list[str], log: str, cwd: Path = ROOT
               ) -> subprocess.Popen[bytes]:
        with (self.folder / log).open("ab") as handle:
            process = subprocess.Popen(pinned(command, CPU_SERVER), cwd=cwd,
                                       stdout=subprocess.DEVNULL, stderr=handle)
        self.processes.append(process)
        return process

    def start_gateway(self, name: str, extra_config: str = "") -> Gateway:
        """Start one of our gateways (own port and config file, shared CA, database and
        backend), wait for it and log the bench user in on it."""
        if not self.gateways:
            port, config = self._first_port, self.config_path
        else:
            port, config = free_port(), self.folder / f"config-{name}.toml"
        config.write_text(self._base_config + self._gateway_section(port)
                          + textwrap.dedent(extra_config))
        process = self._spawn([sys.executable, "-m", "gateway", "--config", str(config),
                               "serve"], f"gateway-{name}.log")
        gateway = Gateway(name, port, process, config)
        _wait_tls(port)
        client = Client(port, self.bench_cert)
        status = client.login()
        client.close()
        assert status == 303, f"bench login on {name} failed ({status})"
        gateway.cookie = {"Cookie": "__Host-sekisho-session="
                                    + client.cookies["__Host-sekisho-session"]}
        self.gateways.append(gateway)
        return gateway

    def start_nginx(self) -> None:
        """nginx 1 worker, mTLS against the same trust bundle, proxy_pass to the backend."""
        self.nginx_port = free_port()
        conf = _nginx_conf(self.folder, self.nginx_port, self.backend_port,
                           self.folder / "var/gateway/tls/server.crt.pem",
                           self.folder / "var/gateway/tls/server.key.pem",
                           self.folder / "var/gateway/trust-bundle.pem")
        self.nginx = self._spawn(["nginx", "-p", str(self.folder / "nginx-temp"), "-c",
                                  str(conf)], "nginx-stderr.log", cwd=self.folder)
        _wait_tls(self.nginx_port)

    def run(self, side: str, requests: int, concurrency: int, *, keepalive: bool = True,
            gateway: Gateway | None = None) -> dict[str, float | str]:
        """One bounded ab run against "ours" (`gateway` or the first), "nginx" or "direct";
        adds `upstream_new` (new TCP connections to the backend during the run) and the CPU
        microseconds per request of the proxy (`proxy_us`: our gateway or nginx's workers)
        and of the backend (`backend_us`), from /proc."""
        proxy_pids: list[int] = []
        if side == "ours":
            chosen = gateway or self.gateways[0]
            url, cert, headers = chosen.url, self.bench_cert, chosen.cookie
            proxy_pids = [chosen.process.pid]
        elif side == "nginx":
            url, cert, headers = f"https://127.0.0.1:{self.nginx_port}", self.bench_cert, {}
            proxy_pids = _children(self.nginx.pid) if self.nginx is not None else []
        else:
            url, cert = f"http://127.0.0.1:{self.backend_port}", None
            headers = DIRECT_HEADERS
        before = _client_ports_to(self.backend_port)
        proxy_cpu, backend_cpu = _cpu_seconds(proxy_pids), _cpu_seconds([self.backend.pid])
        result: dict[str, float | str] = dataclasses.asdict(run_ab(
            url + "/bench", requests=requests, concurrency=concurrency, keepalive=keepalive,
            cert=cert, headers=headers, cpus=CPU_LOAD))
        result["proxy_us"] = (_cpu_seconds(proxy_pids) - proxy_cpu) / requests * 1e6
        result["backend_us"] = (_cpu_seconds([self.backend.pid]) - backend_cpu) / requests * 1e6
        result["upstream_new"] = float(len(_client_ports_to(self.backend_port) - before))
        return result

    def describe(self) -> Iterator[str]:
        """How each side is pinned and configured, read back from the running processes."""
        gateway = self.gateways[0]
        log = (self.folder / f"gateway-{gateway.name}.log").read_text(errors="replace")
        loop = re.search(r"event loop (\w+)", log)
        yield (f"ours:    gateway pid {gateway.process.pid} on cpus "
               f"{_cpus(gateway.process.pid)}, 1 process, event loop "
               f"{loop.group(1) if loop else 'unknown'}, access log off, log level warning, "
               f"keep-alive connection pool to the backend")
        if self.nginx is not None:
            workers = _children(self.nginx.pid)
            yield (f"nginx:   master pid {self.nginx.pid} on cpus {_cpus(self.nginx.pid)}, "
                   f"{len(workers)} worker(s) on cpus "
                   f"{','.join(_cpus(w) for w in workers) or '?'}; ssl_verify_client on, "
                   f"upstream keepalive 32, proxy_http_version 1.1, Connection \"\"")
        yield (f"backend: demo (aiohttp, asyncio loop) pid {self.backend.pid} on cpus "
               f"{_cpus(self.backend.pid)}")
        yield f"ab:      on cpus {CPU_LOAD} (taskset); CA daemon on cpus {CPU_LOAD}"

    def _stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._ca is not None:
            self._ca.stop()
        if os.environ.get("SEKISHO_BENCH_KEEP") is None and hasattr(self, "folder"):
            shutil.rmtree(self.folder, ignore_errors=True)


def proxied_request_cost(cutover_config: str, *, requests: int = 20000, concurrency: int = 16,
                         rounds: int = 3) -> tuple[float, float]:
    """Mean seconds per proxied request (1 / throughput: keep-alive, ab -k, c=16) of our
    gateway without and with `cutover_config` (`[[cutover]]` TOML that must not cut over the
    bench user's fresh certificate). Two gateways on one CA and backend, measured in turns;
    medians of `rounds` runs each."""
    with Stack() as stack:
        plain = stack.start_gateway("plain")
        ruled = stack.start_gateway("cutover", cutover_config)
        for gateway in (plain, ruled):  # warm-up; also proves requests succeed
            warm = stack.run("ours", 2000, concurrency, gateway=gateway)
            if warm["non2xx"]:
                raise RuntimeError(f"{gateway.name}: {warm['non2xx']:.0f} non-2xx answers")
        rates: dict[str, list[float]] = {"plain": [], "cutover": []}
        for _ in range(rounds):
            for gateway in (plain, ruled):
                result = stack.run("ours", requests, concurrency, gateway=gateway)
                if result["non2xx"]:
                    raise RuntimeError(f"{gateway.name}: non-2xx answers")
                rates[gateway.name].append(float(result["rps"]))
    return 1 / median(rates["plain"]), 1 / median(rates["cutover"])


def _line(name: str, r: dict[str, float | str], n: int) -> str:
    return (f"{name:7} {r['rps']:9.0f} req/s   p50 {r['p50']:.0f} ms  p99 {r['p99']:.0f} ms"
            f"   CPU/request: proxy {r['proxy_us']:.0f} us, backend {r['backend_us']:.0f} us"
            f"   non-2xx {r['non2xx']:.0f}   keep-alive {r['keepalive']:.0f}/{n}"
            f"   new backend connections {r['upstream_new']:.0f}   {r['tls']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("ab", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (Debian: apache2-utils, nginx-light)", file=sys.stderr)
            return 1
    with Stack(logins=20, revokes=3) as stack:
        ours = stack.start_gateway("ours")
        stack.start_nginx()
        n, c = args.requests, args.concurrency
        print("== setup")
        for line in stack.describe():
            print(line)
        # Warm up every path, then measure in turns; report medians.
        for side in ("ours", "nginx", "direct"):
            stack.run(side, 2000, c)
        runs: dict[str, list[dict[str, float | str]]] = {"ours": [], "nginx": [], "direct": []}
        for _ in range(args.runs):
            for side in runs:
                runs[side].append(stack.run(side, n, c))
        print(f"== proxied GET /bench (1 KiB), keep-alive, c={c}, n={n}, medians of {args.runs}")
        result = {name: {k: (median([float(r[k]) for r in rs]) if k != "tls" else rs[0][k])
                         for k in rs[0]} for name, rs in runs.items()}
        for name, r in result.items():
            print(_line(name, r, n))
        rps = {name: float(r["rps"]) for name, r in result.items()}
        print(f"ratio ours/nginx {rps['ours'] / rps['nginx']:.2f}   "
              f"ours/direct {rps['ours'] / rps['direct']:.2f}   "
              f"nginx/direct {rps['nginx'] / rps['direct']:.2f}   (target ours/nginx >= 0.5)")

        print(f"== full TLS handshake with client certificate per request, c={c}")
        hs_ours = stack.run("ours", args.handshakes, c, keepalive=False)
        hs_nginx = stack.run("nginx", args.handshakes, c, keepalive=False)
        print(f"ours  {hs_ours['rps']:7.0f} handshakes+requests/s "
              f"(non-2xx {hs_ours['non2xx']:.0f})")
        print(f"nginx {hs_nginx['rps']:7.0f} handshakes+requests/s   "
              f"ratio {float(hs_ours['rps']) / float(hs_nginx['rps']):.2f}")

        print("== proxied p99 while 20 logins (OWASP argon2id) run at once")
        login_clients = [Client(ours.port, cert) for cert in stack.login_certs]
        statuses: list[int] = []
        barrier = threading.Barrier(len(login_clients) + 1)

        def do_login(one: Client) -> None:
            barrier.wait()
            statuses.append(one.login())

        threads = [threading.Thread(target=do_login, args=(one,)) for one in login_clients]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.monotonic()
        busy = stack.run("ours", max(2000, n // 4), c)
        for thread in threads:
            thread.join()
        logins_took = time.monotonic() - started
        print(f"during logins: {busy['rps']:.0f} req/s p50 {busy['p50']:.0f} ms "
              f"p99 {busy['p99']:.0f} ms (idle p99 {result['ours']['p99']:.0f} ms); "
              f"20 logins done in {logins_took:.2f} s, statuses {sorted(set(statuses))}")

        print("== revocation propagation: `sekisho-ca revoke` returns -> session refused")
        delays = []
        for attempt, cert in enumerate(stack.revoke_certs):
            user_id = f"rev{attempt}"
            victim = Client(ours.port, cert)
            assert victim.login() == 303
            assert victim.request("GET", "/bench")[0] == 200
            serial = (stack.folder / f"{user_id}.serial").read_text()
            subprocess.run([sys.executable, "-m", "ca", "--config", str(stack.config_path),
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
