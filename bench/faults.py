"""kill -9 of the CA daemon at a random moment of a 2,000-acquisition burst (R-FAULT-1..3).

Each round: start the real daemon, fire the burst at its internal API (16 concurrent clients;
a client whose connection dies retries the same user once the CA answers again, as the
gateway's user would), SIGKILL the daemon at a random moment, restart it at once, let the
burst finish. Then the invariants of tests/support/faults.check_invariants are checked
(every delivered PKCS#12 stored, no duplicate serial, audit chain, CRL and OCSP agree with
the store), and every user of the round is classified:

- delivered: the client received a PKCS#12 (201);
- stored, answer lost: the certificate was committed but the kill took the answer with it
  (R-CERT-3 stores before answering; the user sees 409 usable_certificate_exists and the
  officer can see and revoke it with `sekisho-ca list`/`revoke`);
- stuck: none of these and no acquisition possible (429, 5xx, or 409 without a stored
  certificate). Must be 0.

Recovery = SIGKILL -> the restarted daemon answers /health (start-up settles intents and
counted tries and re-signs the CRL before listening). The same burst without a kill is run
first as the comparison ("peer"): acquisitions per second with and without the crash.

PKCS#12 files use 2,048 PBKDF2 rounds here (not the production 600,000) to keep a round
short: the crash behaviour does not depend on the rounds.

    .venv/bin/python bench/faults.py [ROUNDS] [--acquisitions 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import make_ca
from ca.config import load_ca_config
from common.passwords import PasswordHasher
from tests.support.faults import CaProcess, check_invariants

PASSWORD = "bench-acquisition-password-1"
KDF_ROUNDS = 2048


@dataclass
class Round:
    """What one burst saw."""

    users: list[str]
    delivered: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # user -> serial, der
    killed_at: float | None = None
    recovery: float | None = None
    seconds: float = 0.0
    retries: int = 0


def seed_users(database: Path, users: list[str]) -> None:
    """Acquisition passwords for every user at once (one argon2 hash, shared)."""
    hasher = PasswordHasher()
    digest = asyncio.run(hasher.hash(PASSWORD))
    hasher.close()
    now = int(time.time())
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO acquisition_secrets (user_id, password_hash, failed_attempts, locked,"
            " issued_at, updated_at) VALUES (?, ?, 0, 0, ?, ?)",
            [(user, digest, now, now) for user in users])


async def burst(ca: CaProcess, state: Round, concurrency: int, kill_after: float | None) -> None:
    """Every user acquires once; connection failures retry until the CA answers."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in state.users:
        queue.put_nowait(user)
    headers = {"Authorization": f"Bearer {ca.token}"}
    started = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                user = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            for _ in range(600):
                try:
                    async with session.post(ca.internal_url + "/v1/acquire", json={
                            "user_id": user, "acquisition_password": PASSWORD},
                            headers=headers) as response:
                        body = await response.json()
                        if response.status == 201:
                            _, cert, _ = pkcs12.load_key_and_certificates(
                                base64.b64decode(body["pkcs12"]), PASSWORD.encode())
                            assert cert is not None
                            state.delivered[user] = (body["serial"], cert.public_bytes(
                                serialization.Encoding.DER))
                        if response.status not in (503, 429):
                            break  # 201, or a definitive refusal (classified afterwards)
                except (TimeoutError, aiohttp.ClientError):
                    pass
                state.retries += 1
                await asyncio.sleep(0.1)

    async def killer() -> None:
        if kill_after is None:
            return
        await asyncio.sleep(kill_after)
        killed = time.monotonic()  # recovery counted from here: reaping the orphans included
        state.killed_at = killed - started
        await asyncio.to_thread(ca.kill9)  # SIGKILL, then its orphaned pool workers by PID
        ca.start(wait=False)
        await asyncio.to_thread(ca.wait_healthy, 60)
        state.recovery = time.monotonic() - killed

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.gather(killer(), *(client(s) for _ in range(concurrency)))
    state.seconds = time.monotonic() - started


def classify(ca: CaProcess, state: Round) -> dict[str, int]:
    """delivered / stored with the answer lost / stuck, after checking the invariants."""
    counts = check_invariants(ca, dict(state.delivered.values()))
    issued = {user for (user,) in ca.rows(
        "SELECT user_id FROM certificates WHERE state = 'issued' AND user_id LIKE ?",
        (state.users[0][:2] + "%",))}
    lost = issued - set(state.delivered)
    probe = {user: PASSWORD for user in state.users if user not in issued}
    stuck = check_invariants(ca, {}, probe)["stuck"] if probe else 0
    abandoned = ca.rows("SELECT COUNT(*) FROM certificates WHERE state = 'abandoned'"
                        " AND user_id LIKE ?", (state.users[0][:2] + "%",))[0][0]
    return {"delivered": len(state.delivered), "stored": len(issued), "answer_lost": len(lost),
            "abandoned": abandoned, "stuck": stuck, "probed": len(probe),
            "total_stored": counts["stored"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=2)
    parser.add_argument("--acquisitions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    config_path = make_ca(kdf_rounds=KDF_ROUNDS)
    config = load_ca_config(config_path)
    ca = CaProcess(config_path=config_path,
                   public_url=f"http://127.0.0.1:{config.public_listen.port}",
                   internal_url=f"http://127.0.0.1:{config.internal_listen.port}",
                   database=config.database, token=config.api_token_file.read_text().strip(),
                   directory=config_path.parent)
    prefixes = [f"{10 + i}" for i in range(args.rounds + 1)]
    rounds = [Round([f"{p}{n:04d}" for n in range(args.acquisitions)]) for p in prefixes]
    seed_users(config.database, [u for r in rounds for u in r.users])
    print(f"bench/faults.py: {args.acquisitions} acquisitions per burst, {args.concurrency}"
          f" concurrent clients, PKCS#12 with {KDF_ROUNDS} PBKDF2 rounds (lowered from 600,000"
          f" to keep the bench short), 2 cores shared")
    try:
        ca.start()
        baseline = rounds[0]
        asyncio.run(burst(ca, baseline, args.concurrency, None))
        clean_rate = len(baseline.delivered) / baseline.seconds
        print(f"clean burst (no kill): {len(baseline.delivered)} delivered in"
              f" {baseline.seconds:.1f} s = {clean_rate:.0f} acquisitions/s")
        print("round  killed at  recovery  delivered  stored  answer lost  abandoned  stuck"
              "  retries  acq/s  vs clean")
        for number, state in enumerate(rounds[1:], 1):
            kill_after = rng.uniform(0.1, 0.9) * baseline.seconds
            asyncio.run(burst(ca, state, args.concurrency, kill_after))
            result = classify(ca, state)
            rate = len(state.delivered) / state.seconds
            print(f"{number:5d}  {state.killed_at or 0:7.2f} s  {state.recovery or 0:6.2f} s"
                  f"  {result['delivered']:9d}  {result['stored']:6d}  {result['answer_lost']:11d}"
                  f"  {result['abandoned']:9d}  {result['stuck']:5d}  {state.retries:7d}"
                  f"  {rate:5.0f}  {rate / clean_rate:7.2f}x")
            assert result["stuck"] == 0
    finally:
        ca.stop()
        shutil.rmtree(config_path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
