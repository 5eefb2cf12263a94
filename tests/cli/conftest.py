from live import daemon  # noqa: F401  (the live-daemon fixture)
