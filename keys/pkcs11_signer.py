"""Keys kept in a PKCS#11 token (an HSM, or SoftHSM2 for tests), SPEC R-KEY-1.

The key store has the file store's operations (create, load, replace, exists) plus `import_key`
and `describe`. Every private key is generated inside the token with CKA_TOKEN, CKA_PRIVATE,
CKA_SENSITIVE true and CKA_EXTRACTABLE false (PKCS#11 v2.40 §4.9): the token signs with it and
never lets it out, and the token itself then reports CKA_ALWAYS_SENSITIVE and
CKA_NEVER_EXTRACTABLE. Keys are found by CKA_LABEL (`<prefix><label>`, e.g. "sekisho-g1");
CKA_ID is the SHA-1 of the public point (RFC 5280 §4.2.1.2 method 1), the pairing other PKCS#11
tools expect.

Threads: python-pkcs11 releases the GIL around every call but initialises the module with
C_Initialize(NULL), which tells the module that the application will not call it from several
threads at once (SoftHSM2 then turns its own mutexes off). So every call goes through one of a
small pool of sessions, each used by one thread at a time, and the whole module is serialised
unless the configuration says it is thread-safe on its own. The CA calls `sign()` from worker
threads (asyncio.to_thread), never on the event loop.

A failing token (module error, PIN locked, token removed) raises `TokenUnavailable`; the next
call tries once to open a fresh session, so a token that comes back is used again without a
restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from keys.errors import KeyCustodyError, KeyExists, KeyNotFound
from keys.signer import ForwardingEcSigner

T = TypeVar("T")

# Our algorithm names -> (cryptography curve, asn1crypto named curve, hash).
_CURVES: dict[str, tuple[ec.EllipticCurve, str]] = {
    "p256": (ec.SECP256R1(), "secp256r1"),
    "p384": (ec.SECP384R1(), "secp384r1"),
}
_HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512,
}

# What a failing token looks like from python-pkcs11: these end the session (or the login),
# and opening a fresh one is the only way on.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11.SessionClosed, p11.SessionHandleInvalid, p11.DeviceRemoved, p11.TokenNotPresent,
    p11.TokenNotRecognised, p11.DeviceError, p11.DeviceMemory, p11.UserNotLoggedIn,
    p11.PinExpired, p11.PinLocked, p11.GeneralError, p11.FunctionFailed,
    # A key object the session had found is gone (deleted, or the module was reset): a fresh
    # session looks it up again.
    p11.KeyHandleInvalid, p11.ObjectHandleInvalid, p11.OperationActive,
)


# (module, token label) -> SHA-256 of the PIN this process logged in with: a later store in
# the same process is logged in already and must not get in with another PIN.
_LOGINS: dict[tuple[str, str], bytes] = {}
_LOGINS_LOCK = threading.Lock()


class TokenUnavailable(KeyCustodyError):
    """The token cannot sign now (module error, PIN locked or refused, token removed)."""


class WrongPin(KeyCustodyError):
    """The token refuses the PIN."""


def _describe_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    detail = str(exc).strip()
    return f"{name}: {detail}" if detail and detail != name else name


def load_module(module: str) -> Any:
    """Load (once per process) the PKCS#11 module at `module` and initialise it."""
    try:
        return pkcs11.lib(module)
    except (p11.PKCS11Error, OSError) as exc:
        raise KeyCustodyError(
            f"cannot load the PKCS#11 module {module}: {_describe_failure(exc)}"
        ) from None


class Pkcs11Token:
    """A logged-in token behind a small pool of sessions (thread-safe).

    `pin` is held only in memory and never appears in messages or logs. `sessions` above 1 is
    for modules that are thread-safe across sessions without CKF_OS_LOCKING_OK (most network
    HSM clients); with the default 1, every call is serialised.
    """

    def __init__(self, module: str, token_label: str, pin: str, *, sessions: int = 1) -> None:
        if sessions < 1:
            raise KeyCustodyError("keys.pkcs11_sessions must be at least 1")
        self.module = module
        self.token_label = token_label
        self._pin = pin
        self._size = sessions
        self._lib = load_module(module)
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._open_count = 0
        self._lock = threading.Lock()
        # One lock for the module when it may not be called from several threads at once.
        self._serial = threading.Lock() if sessions == 1 else None
        self._generation = 0
        self._key_epoch = 0
        self._closed = False
        self._idle.put(self._open_session())  # fails at start-up with a clear line

    # -- sessions --------------------------------------------------------------------------

    def _find_token(self) -> Any:
        try:
            return self._lib.get_token(token_label=self.token_label)
        except p11.NoSuchToken:
            raise KeyCustodyError(
                f"no token labelled {self.token_label!r} in {self.module}"
                " (check keys.token_label, or initialise the token)"
            ) from None
        except p11.MultipleTokensReturned:
            raise KeyCustodyError(
                f"more than one token is labelled {self.token_label!r} in {self.module}"
            ) from None
        except p11.PKCS11Error as exc:
            raise TokenUnavailable(
                f"token {self.token_label!r} unavailable: {_describe_failure(exc)}"
            ) from None

    def _open_session(self) -> _PooledSession:
        token = self._find_token()
        login = (self.module, self.token_label)
        pin_digest = hashlib.sha256(self._pin.encode()).digest()
        try:
            try:
                session = token.open(rw=True, user_pin=self._pin)
                with _LOGINS_LOCK:
                    _LOGINS[login] = pin_digest
            except p11.UserAlreadyLoggedIn:
                # The login belongs to the application, not the session (PKCS#11 §5.6): a
                # second session shares the first one's, and the token does not check this
                # PIN again, so we compare it with the one that logged in.
                with _LOGINS_LOCK:
                    known = _LOGINS.get(login)
                if known is not None and not hmac.compare_digest(known, pin_digest):
                    raise p11.PinIncorrect() from None
                session = token.open(rw=True)
        except p11.PinIncorrect:
            raise WrongPin(
                f"token {self.token_label!r} refused the PIN (check the PIN file or variable;"
                " repeated failures lock the PIN)"
            ) from None
        except p11.PinLocked:
            raise TokenUnavailable(
                f"token {self.token_label!r}: the user PIN is locked; the token's security"
                " officer must unlock it"
            ) from None
        except p11.PKCS11Error as exc:
            raise TokenUnavailable(
                f"cannot open a session on token {self.token_label!r}: {_describe_failure(exc)}"
            ) from None
        with self._lock:
            self._open_count += 1
            generation = self._generation
        return _PooledSession(session, generation)

    @contextmanager
    def session(self) -> Iterator[_PooledSession]:
        """A session for the caller's thread alone; a failing session is dropped."""
        if self._closed:
            raise TokenUnavailable(f"token {self.token_label!r}: the key store is closed")
        pooled = self._take()
        healthy = True
        try:
            if self._serial is not None:
                with self._serial:
                    yield pooled
            else:
                yield pooled
        except _SESSION_LOST:
            healthy = False
            raise
        finally:
            self._give_back(pooled, healthy)

    def _take(self) -> _PooledSession:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            may_open = self._open_count < self._size
        if may_open:
            return self._open_session()
        try:
            return self._idle.get(timeout=30)
        except queue.Empty:
            raise TokenUnavailable(
                f"token {self.token_label!r}: no session became free within 30 s") from None

    def _give_back(self, pooled: _PooledSession, healthy: bool) -> None:
        if healthy and not self._closed and pooled.generation == self._generation:
            self._idle.put(pooled)
            return
        with self._lock:
            self._open_count -= 1
        with contextlib.suppress(p11.PKCS11Error):  # gone already (token removed, module reset)
            pooled.session.close()

    def run(self, action: Callable[[Any], T]) -> T:
        """Run `action(session)`; a lost session is replaced once before giving up."""
        return self._run(lambda pooled: action(pooled.session))

    def with_private_key(self, key_id: bytes, action: Callable[[Any], T]) -> T:
        """Run `action(private key object)` for the key with CKA_ID `key_id`. The object is
        found once per session and kept: a search per signature (C_FindObjects*) costs more
        than the signature in SoftHSM2."""

        def act(pooled: _PooledSession) -> T:
            if pooled.key_epoch != self._key_epoch:
                pooled.keys.clear()
                pooled.key_epoch = self._key_epoch
            key = pooled.keys.get(key_id)
            if key is None:
                key = pooled.session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
                pooled.keys[key_id] = key
            return action(key)

        return self._run(act)

    def keys_changed(self) -> None:
        """Labels now name other objects (a responder key was replaced): forget the keys each
        session found."""
        with self._lock:
            self._key_epoch += 1

    def _run(self, action: Callable[[_PooledSession], T]) -> T:
        for attempt in (1, 2):
            try:
                with self.session() as pooled:
                    return action(pooled)
            except _SESSION_LOST as exc:
                if attempt == 2:
                    raise TokenUnavailable(
                        f"token {self.token_label!r} unavailable: {_describe_failure(exc)}"
                    ) from None
            except (p11.NoSuchKey, p11.MultipleObjectsReturned, KeyCustodyError):
                raise
            except p11.PKCS11Error as exc:
                raise TokenUnavailable(
                    f"token {self.token_label!r}: {_describe_failure(exc)}"
                ) from None
        raise AssertionError("unreachable")

    def reset_sessions(self) -> None:
        """Close every idle session; busy ones are closed when handed back. The next call logs
        in again (used after the PIN changed, and by the fault tests)."""
        with self._lock:
            self._generation += 1
        while True:
            try:
                pooled = self._idle.get_nowait()
            except queue.Empty:
                return
            self._give_back(pooled, healthy=False)

    def close(self) -> None:
        """Close every session (logging out of the token)."""
        self.reset_sessions()
        self._closed = True


@dataclass
class _PooledSession:
    session: Any
    generation: int
    keys: dict[bytes, Any] = field(default_factory=dict)
    key_epoch: int = 0


@dataclass(frozen=True)
class TokenKeyInfo:
    """What `sekisho-ca keys list` shows of one private key object (never its value)."""

    label: str
    key_id: str
    algorithm: str
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool
    token: bool

    @property
    def non_extractable(self) -> bool:
        """The token vouches that the key cannot leave it (now and, if generated in it, ever)."""
        return self.sensitive and not self.extractable and self.token


class Pkcs11Backend:
    """The object behind a `ForwardingEcSigner`: signs with one private key in the token.

    The digest is computed here and the token signs it with CKM_ECDSA (one round trip, a few
    dozen bytes); the token's raw r||s (PKCS#11 §2.3.1) is converted to the DER ECDSA-Sig-Value
    X.509 wants (RFC 5480 §2.2).
    """

    # The CA signs with this from worker threads (asyncio.to_thread): the call can wait on
    # the token, a network HSM's round trip included.
    signs_off_loop = True

    def __init__(self, token: Pkcs11Token, label: str, object_label: str, key_id: bytes,
                 public_key: ec.EllipticCurvePublicKey) -> None:
        self._token = token
        self._label = label
        self._object_label = object_label
        # Bound to the key (CKA_ID), not the label: a signer opened before its label moved to
        # a fresh key (responder re-keying) keeps signing with the key its certificate names.
        self._key_id = key_id
        self._public_key = public_key
        self._coordinate_bytes = (public_key.curve.key_size + 7) // 8

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, read from the token when the key was opened."""
        return self._public_key

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
             ) -> bytes:
        """A DER ECDSA signature over `data` made inside the token."""
        algorithm = getattr(signature_algorithm, "algorithm", None)
        digest_of = _HASHES.get(getattr(algorithm, "name", ""))
        if not isinstance(signature_algorithm, ec.ECDSA) or digest_of is None:
            raise KeyCustodyError(f"{self._label}: only ECDSA with SHA-2 is supported")
        digest = digest_of(data).digest()

        try:
            raw = self._token.with_private_key(
                self._key_id,
                lambda key: bytes(key.sign(digest, mechanism=Mechanism.ECDSA)))
        except p11.NoSuchKey:
            raise TokenUnavailable(
                f"key {self._object_label!r} is no longer in token {self._token.token_label!r}"
            ) from None
        size = self._coordinate_bytes
        if len(raw) != 2 * size:
            raise KeyCustodyError(f"{self._label}: the token returned a malformed signature")
        r = int.from_bytes(raw[:size], "big")
        s = int.from_bytes(raw[size:], "big")
        return encode_dss_signature(r, s)


def _public_key_of(public_object: Any) -> ec.EllipticCurvePublicKey:
    from pkcs11.util.ec import encode_ec_public_key

    key = serialization.load_der_public_key(encode_ec_public_key(public_object))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyCustodyError("the token holds a non-EC public key under a CA label")
    return key


def _curve_name(key: ec.EllipticCurvePublicKey) -> str:
    for name, (curve, _) in _CURVES.items():
        if curve.name == key.curve.name:
            return name
    raise KeyCustodyError(f"unsupported curve {key.curve.name}")


def _key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    point = public_key.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(point).digest()  # noqa: S324 - RFC 5280 key identifier, not security


_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: True,  # for the relabelling of a replaced responder key only
}


class Pkcs11KeyStore:
    """Signing keys in a PKCS#11 token, addressed by label like the file store (R-KEY-1)."""

    def __init__(self, token: Pkcs11Token, *, label_prefix: str = "sekisho-") -> None:
        self.token = token
        self._prefix = label_prefix

    def object_label(self, label: str) -> str:
        """The CKA_LABEL of the key called `label`."""
        return self._prefix + label

    def _find(self, session: Any, object_class: ObjectClass, object_label: str) -> list[Any]:
        return list(session.get_objects({Attribute.CLASS: object_class,
                                         Attribute.LABEL: object_label}))

    def exists(self, label: str) -> bool:
        """Whether the token holds a private key with that label."""
        object_label = self.object_label(label)
        return self.token.run(
            lambda s: bool(self._find(s, ObjectClass.PRIVATE_KEY, object_label)))

    def create(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Generate a key pair inside the token (non-extractable) and return its signer."""
        if self.exists(label):
            raise KeyExists(f"token {self.token.token_label!r} already holds a key "
                            f"{self.object_label(label)!r}; refusing to overwrite it")
        self._generate(self.object_label(label), algorithm)
        return self.load(label)

    def _generate(self, object_label: str, algorithm: str) -> None:
        spec = _CURVES.get(algorithm)
        if spec is None:
            raise KeyCustodyError(f"unknown CA key algorithm {algorithm!r}; use p256 or p384")

        def generate(session: Any) -> None:
            parameters = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(spec[1])},
                local=True,
            )
            public, private = parameters.generate_keypair(
                store=True, label=object_label,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False,
                                 Attribute.MODIFIABLE: True},
                private_template=dict(_PRIVATE_TEMPLATE),
            )
            key_id = _key_id(_public_key_of(public))
            public[Attribute.ID] = key_id
            private[Attribute.ID] = key_id

        self.token.run(generate)

    def load(self, label: str) -> ForwardingEcSigner:
        """Open an existing key: find it by label and read its public half."""
        object_label = self.object_label(label)

        def find(session: Any) -> tuple[list[Any], list[Any]]:
            return (self._find(session, ObjectClass.PRIVATE_KEY, object_label),
                    self._find(session, ObjectClass.PUBLIC_KEY, object_label))

        private, public = self.token.run(find)
        if not private:
            raise KeyNotFound(
                f"key {object_label!r} not found in token {self.token.token_label!r};"
                " run `sekisho-ca init` (or `keys import`) first"
            )
        if len(private) > 1 or len(public) != 1:
            raise KeyCustodyError(
                f"token {self.token.token_label!r} holds {len(private)} private and "
                f"{len(public)} public objects labelled {object_label!r}; expected one each"
            )
        if private[0][Attribute.EXTRACTABLE] or not private[0][Attribute.SENSITIVE]:
            raise KeyCustodyError(
                f"key {object_label!r} in token {self.token.token_label!r} is extractable or "
                "not sensitive; refusing to sign with a key that can leave the token"
            )
        public_key = _public_key_of(public[0])
        key_id = bytes(private[0][Attribute.ID])
        if key_id != bytes(public[0][Attribute.ID]):
            raise KeyCustodyError(
                f"key {object_label!r} in token {self.token.token_label!r}: the private and "
                "public objects do not belong together (CKA_ID differs)")
        return ForwardingEcSigner(
            Pkcs11Backend(self.token, label, object_label, key_id, public_key), label)

    def replace(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Generate a fresh key under `label`; the previous one is kept as `<label>.old`
        (and the one before that destroyed), like the file store's `.old` file."""
        object_label = self.object_label(label)
        fresh_label, old_label = object_label + ".new", object_label + ".old"

        def destroy(session: Any, name: str) -> None:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._find(session, object_class, name):
                    obj.destroy()

        self.token.run(lambda s: destroy(s, fresh_label))  # a crash's leftover
        self._generate(fresh_label, algorithm)

        def swap(session: Any) -> None:
            destroy(session, old_label)
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._find(session, object_class, object_label):
                    obj[Attribute.LABEL] = old_label
                for obj in self._find(session, object_class, fresh_label):
                    obj[Attribute.LABEL] = object_label

        self.token.run(swap)
        self.token.keys_changed()
        return self.load(label)

    def key_file(self, label: str) -> bytes | None:
        """None: a token key has no file; another node finds it in the same token."""
        return None

    def install_key_file(self, label: str, pem: bytes) -> bool:
        """Refused: a node keeping responder keys in the token cannot take a key file
        (the nodes' `keys.ocsp_keys` settings differ)."""
        raise KeyCustodyError(f"a key file for {label!r} was published, but this node keeps "
                              "responder keys in the token: set the same keys.ocsp_keys on "
                              "every node")

    def keys_changed_elsewhere(self) -> None:
        """Another node replaced a key of the shared token: forget the objects found."""
        self.token.keys_changed()

    def import_key(self, label: str, private_key: ec.EllipticCurvePrivateKey) -> None:
        """Write an existing EC key into the token as a sensitive, non-extractable object
        (the migration path of a file-key CA); the token reports it as not always-sensitive
        and not never-extractable, which is the truth."""
        if self.exists(label):
            raise KeyExists(f"token {self.token.token_label!r} already holds a key "
                            f"{self.object_label(label)!r}; refusing to overwrite it")
        public_key = private_key.public_key()
        algorithm = _curve_name(public_key)
        ec_params = encode_named_curve_parameters(_CURVES[algorithm][1])
        point = public_key.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
        size = (public_key.curve.key_size + 7) // 8
        value = private_key.private_numbers().private_value.to_bytes(size, "big")
        object_label, key_id = self.object_label(label), _key_id(public_key)
        from asn1crypto.core import OctetString

        def write(session: Any) -> None:
            session.create_object({
                Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC,
                Attribute.LABEL: object_label, Attribute.ID: key_id,
                Attribute.EC_PARAMS: ec_params, Attribute.VALUE: value,
                Attribute.SIGN: True, Attribute.DERIVE: False, **_PRIVATE_TEMPLATE,
            })
            session.create_object({
                Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
                Attribute.LABEL: object_label, Attribute.ID: key_id, Attribute.TOKEN: True,
                Attribute.PRIVATE: False, Attribute.MODIFIABLE: True,
                Attribute.EC_PARAMS: ec_params, Attribute.EC_POINT: OctetString(point).dump(),
                Attribute.VERIFY: True,
            })

        self.token.run(write)

    def describe(self) -> list[TokenKeyInfo]:
        """Every private key of ours in the token, with the attributes that prove custody."""

        def read(session: Any) -> list[TokenKeyInfo]:
            found = []
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                object_label = obj.label or ""
                if not object_label.startswith(self._prefix):
                    continue
                attributes = obj.get_attributes([
                    Attribute.ID, Attribute.EC_PARAMS, Attribute.SENSITIVE,
                    Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
                    Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL, Attribute.TOKEN,
                ])
                ec_params = attributes.get(Attribute.EC_PARAMS, b"")
                algorithm = next((name for name, (_, curve) in _CURVES.items()
                                  if encode_named_curve_parameters(curve) == ec_params), "?")
                found.append(TokenKeyInfo(
                    label=object_label.removeprefix(self._prefix),
                    key_id=bytes(attributes.get(Attribute.ID, b"")).hex(),
                    algorithm=algorithm,
                    sensitive=bool(attributes.get(Attribute.SENSITIVE)),
                    extractable=bool(attributes.get(Attribute.EXTRACTABLE, True)),
                    always_sensitive=bool(attributes.get(Attribute.ALWAYS_SENSITIVE)),
                    never_extractable=bool(attributes.get(Attribute.NEVER_EXTRACTABLE)),
                    local=bool(attributes.get(Attribute.LOCAL)),
                    token=bool(attributes.get(Attribute.TOKEN)),
                ))
            return sorted(found, key=lambda info: info.label)

        return self.token.run(read)


def signature_round_trip(signer: ForwardingEcSigner) -> None:
    """Sign a fresh challenge with `signer` and verify it with its public key (keys check)."""
    from keys.signer import signature_hash_for

    challenge = os.urandom(32)
    algorithm = ec.ECDSA(signature_hash_for(signer))
    signature = signer.sign(challenge, algorithm)
    signer.public_key().verify(signature, challenge, algorithm)
