"""Pure rules of Sekisho: no I/O, the time is always passed in (STYLE 2, 3)."""
