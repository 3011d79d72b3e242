"""Internals the modules share: cache folders, progress bars, the allocator switch, Debian fetches (not public API)."""
