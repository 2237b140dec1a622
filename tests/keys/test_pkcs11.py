"""The PKCS#11 key store against a real SoftHSM2 token (R-KEY-1)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from keys.custody import import_file_key, load_pin
from keys.errors import InsecureKeyFile, KeyCustodyError, KeyExists, KeyNotFound
from keys.file_signer import FileKeyStore
from keys.pkcs11_signer import (
    Pkcs11KeyStore,
    Pkcs11Token,
    TokenUnavailable,
    WrongPin,
    signature_round_trip,
)
from tests.support.softhsm import SoftHsm


@pytest.fixture
def store(softhsm: SoftHsm) -> Iterator[Pkcs11KeyStore]:
    """A key store on the session's token with a label prefix of this test's own."""
    token = Pkcs11Token(softhsm.module, softhsm.token_label, softhsm.pin)
    yield Pkcs11KeyStore(token, label_prefix=f"k{secrets.token_hex(4)}-")
    token.close()


class TestKeysInTheToken:
    """Keys are generated in the token, stay there, and sign like the file keys."""

    @pytest.mark.parametrize(("algorithm", "digest"), [("p256", hashes.SHA256()),
                                                       ("p384", hashes.SHA384())])
    def test_created_key_signs_der_ecdsa_that_cryptography_verifies(
            self, store: Pkcs11KeyStore, algorithm: str, digest: hashes.HashAlgorithm) -> None:
        """R-KEY-1: the token's raw r||s comes back as DER that verifies with the public key."""
        signer = store.create("g1", algorithm)
        assert signer.curve.name == {"p256": "secp256r1", "p384": "secp384r1"}[algorithm]
        signature = signer.sign(b"to be signed", ec.ECDSA(digest))
        signer.public_key().verify(signature, b"to be signed", ec.ECDSA(digest))
        tampered = b"to be signeD"
        with pytest.raises(InvalidSignature):
            signer.public_key().verify(signature, tampered, ec.ECDSA(digest))

    def test_private_key_object_is_sensitive_non_extractable_and_value_unreadable(
            self, store: Pkcs11KeyStore, softhsm: SoftHsm) -> None:
        """R-KEY-1: CKA_EXTRACTABLE=false, CKA_SENSITIVE=true, CKA_TOKEN=true; CKA_VALUE
        cannot be read, not even by a logged-in session."""
        store.create("root", "p384")
        token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token_label)
        with token.open() as session:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY,
                                  label=store.object_label("root"))
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.TOKEN] is True
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            assert key[Attribute.ALWAYS_SENSITIVE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[Attribute.VALUE]
        with pytest.raises(KeyCustodyError, match="never leaves"):
            store.load("root").private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())

    def test_create_refuses_an_existing_label_and_load_finds_it_again(
            self, store: Pkcs11KeyStore) -> None:
        """Like the file store: no overwrite; a fresh session finds the key by label."""
        first = store.create("g1", "p256")
        with pytest.raises(KeyExists):
            store.create("g1", "p256")
        again = store.load("g1")
        assert again.public_key().public_numbers() == first.public_key().public_numbers()
        assert store.exists("g1") and not store.exists("g2")

    def test_extractable_key_under_our_label_is_refused(
            self, store: Pkcs11KeyStore, softhsm: SoftHsm) -> None:
        """R-KEY-1: a key someone else put under our label that can leave the token is
        never used for signing."""
        token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token_label)
        with token.open(rw=True) as session:
            parameters = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            parameters.generate_keypair(
                store=True, label=store.object_label("g1"), id=b"planted",
                private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
        with pytest.raises(KeyCustodyError, match="extractable or not sensitive"):
            store.load("g1")

    def test_missing_label_is_one_clear_error(self, store: Pkcs11KeyStore) -> None:
        """R-KEY-1: a missing key label names the label and the token."""
        with pytest.raises(KeyNotFound, match=r"not found in token 'sekisho-test'"):
            store.load("g9")

    def test_replace_keeps_the_previous_key_as_old(self, store: Pkcs11KeyStore) -> None:
        """Responder re-keying: a new key under the label, the previous one as `.old`."""
        old_signer = store.create("g1-ocsp", "p256")
        before = old_signer.public_key().public_numbers()
        after = store.replace("g1-ocsp", "p256").public_key().public_numbers()
        assert before != after
        # A signer opened before the re-key (the OCSP service until it reloads) keeps signing
        # with the key its certificate names, not with whatever now has the label.
        signature = old_signer.sign(b"late answer", ec.ECDSA(hashes.SHA256()))
        old_signer.public_key().verify(signature, b"late answer", ec.ECDSA(hashes.SHA256()))
        assert store.load("g1-ocsp").public_key().public_numbers() == after
        assert store.load("g1-ocsp.old").public_key().public_numbers() == before
        third = store.replace("g1-ocsp", "p256").public_key().public_numbers()
        assert store.load("g1-ocsp.old").public_key().public_numbers() == after
        assert third not in (before, after)
        labels = [info.label for info in store.describe()]
        assert labels == ["g1-ocsp", "g1-ocsp.old"]

    def test_describe_reports_the_custody_attributes(self, store: Pkcs11KeyStore) -> None:
        """`keys list`'s source: algorithm, CKA_ID and the non-extractability attributes."""
        store.create("root", "p384")
        (info,) = store.describe()
        assert (info.label, info.algorithm) == ("root", "p384")
        assert info.non_extractable and info.never_extractable and info.local
        assert len(info.key_id) == 40

    def test_signing_from_many_threads_is_serialised_and_correct(
            self, store: Pkcs11KeyStore) -> None:
        """Concurrency: 8 threads x 50 signatures through one token, all valid."""
        signer = store.create("g1", "p256")
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                for n in range(50):
                    data = f"{index}-{n}".encode()
                    signature = signer.sign(data, ec.ECDSA(hashes.SHA256()))
                    signer.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []


class TestStartUpFailures:
    """A wrong PIN, a missing module or token: one clear error, no PIN in it."""

    def test_wrong_pin(self, softhsm: SoftHsm) -> None:
        """R-KEY-1: the token refuses the PIN; the message does not contain it."""
        with pytest.raises(WrongPin, match="refused the PIN") as caught:
            Pkcs11Token(softhsm.module, softhsm.token_label, "0000wrong")
        assert "0000wrong" not in str(caught.value)

    def test_wrong_pin_while_this_process_is_logged_in(self, store: Pkcs11KeyStore,
                                                       softhsm: SoftHsm) -> None:
        """R-KEY-1: the login is per application, so the token would not check a second
        store's PIN; ours does, and refuses a wrong one."""
        store.create("g1", "p256")  # this process is logged in now
        with pytest.raises(WrongPin, match="refused the PIN"):
            Pkcs11Token(softhsm.module, softhsm.token_label, "0000wrong")
        second = Pkcs11Token(softhsm.module, softhsm.token_label, softhsm.pin)
        second.close()

    def test_missing_module(self, tmp_path: Path) -> None:
        """R-KEY-1: a module path that does not exist."""
        with pytest.raises(KeyCustodyError, match="cannot load the PKCS#11 module"):
            Pkcs11Token(str(tmp_path / "libnothing.so"), "x", "1234")

    def test_missing_token(self, softhsm: SoftHsm) -> None:
        """R-KEY-1: no token with that label."""
        with pytest.raises(KeyCustodyError, match="no token labelled 'nope'"):
            Pkcs11Token(softhsm.module, "nope", softhsm.pin)

    def test_pin_file_must_be_owner_only(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         ) -> None:
        """The PIN file is refused when group or others can read it; the variable wins."""
        pin_file = tmp_path / "pin"
        pin_file.write_text("1234\n")
        pin_file.chmod(0o640)
        with pytest.raises(InsecureKeyFile):
            load_pin(pin_file, "SEKISHO_TEST_PIN_VAR")
        monkeypatch.setenv("SEKISHO_TEST_PIN_VAR", "5678")
        assert load_pin(pin_file, "SEKISHO_TEST_PIN_VAR") == "5678"


class TestTokenUnavailable:
    """The token going away gives clear errors, and it is used again when it comes back."""

    def test_pin_changed_under_us_fails_closed_then_recovers(
            self, store: Pkcs11KeyStore, softhsm: SoftHsm) -> None:
        """After the sessions are lost, a refused login is TokenUnavailable/WrongPin, never
        a signature; with the PIN back, signing works again without a restart."""
        signer = store.create("g1", "p256")
        new_pin = secrets.token_hex(8)
        changed = softhsm.pkcs11_tool("--login", "--pin", softhsm.pin, "--change-pin",
                                      "--new-pin", new_pin)
        assert changed.returncode == 0, changed.stderr
        try:
            store.token.reset_sessions()  # as after a token reset or removal
            pkcs11.lib(softhsm.module).reinitialize()  # forget our own process's login
            with pytest.raises(KeyCustodyError, match=r"refused the PIN|unavailable"):
                signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
        finally:
            restored = softhsm.pkcs11_tool("--login", "--pin", new_pin, "--change-pin",
                                           "--new-pin", softhsm.pin)
            assert restored.returncode == 0, restored.stderr
        # The token is back (SoftHSM2 re-reads its files when the module is initialised, as
        # after a re-inserted token): the same signer works again without a restart.
        pkcs11.lib(softhsm.module).reinitialize()
        signature_round_trip(signer)

    def test_closed_store_refuses(self, store: Pkcs11KeyStore) -> None:
        """A closed key store is TokenUnavailable, not a crash."""
        signer = store.create("g1", "p256")
        store.token.close()
        with pytest.raises(TokenUnavailable):
            signer.sign(b"data", ec.ECDSA(hashes.SHA256()))


class TestImport:
    """`keys import`: a file key moves into the token and becomes non-extractable."""

    def test_import_file_key(self, store: Pkcs11KeyStore, tmp_path: Path) -> None:
        """The imported key signs for the file key's public key; the token reports it
        sensitive and non-extractable (though not always-sensitive, which is the truth)."""
        passphrase = b"p" * 32
        file_signer = FileKeyStore(tmp_path, passphrase).create("root", "p384")
        import_file_key(tmp_path / "root.key.pem", passphrase, store, "root")
        token_signer = store.load("root")
        assert (token_signer.public_key().public_numbers()
                == file_signer.public_key().public_numbers())
        (info,) = store.describe()
        assert info.non_extractable and not info.never_extractable and not info.local
        with pytest.raises(KeyExists):
            import_file_key(tmp_path / "root.key.pem", passphrase, store, "root")
