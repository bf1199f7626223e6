"""One module per template; each exposes ``main(argv)`` and its argument ``SPEC``."""
