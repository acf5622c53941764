"""Maintainers' tools that are not part of either path: the generated architecture page."""
