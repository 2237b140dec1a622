"""Key-custody failures, each with a message that says what to fix."""


class KeyCustodyError(Exception):
    """A key cannot be created, opened or used safely."""


class InsecureKeyFile(KeyCustodyError):
    """A key file is readable by the group or others (R-OPS-3)."""


class KeyExists(KeyCustodyError):
    """Refusing to overwrite an existing key."""


class KeyNotFound(KeyCustodyError):
    """The named key does not exist in the key store."""


class WrongPassphrase(KeyCustodyError):
    """The passphrase does not decrypt the key."""
