"""HTTP surfaces of the CA daemon, one module each (STYLE 6)."""
