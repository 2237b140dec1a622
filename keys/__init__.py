"""Key custody: the CA's and OCSP responders' signing keys, encrypted at rest, behind a signer.

Only `ca/` imports this package (STYLE 1).
"""
