"""The `patchvq` command line (a face: it parses arguments and prints; nothing imports it)."""
