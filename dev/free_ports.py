"""Check, before `make dev` starts anything, that its ports are free: `python dev/free_ports.py
serving=8080 webapp=8501 ...`. A taken port is named with the make variable that moves it."""

from __future__ import annotations

import socket
import sys


def taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (or the port cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def main(args: list[str]) -> int:
    busy = [(name, int(port)) for name, port in (a.split("=") for a in args) if taken(int(port))]
    for name, port in busy:
        print(
            f"make dev: port {port} ({name}) is in use; stop what uses it, or choose another "
            f"port: make dev DEV_{name.upper()}_PORT=<port>",
            file=sys.stderr,
        )
    return 1 if busy else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
