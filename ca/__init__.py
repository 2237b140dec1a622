"""The Sekisho certificate authority: issuance, renewal, revocation, CRL and OCSP."""
