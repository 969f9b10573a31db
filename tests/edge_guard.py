"""Run edgemm's torch-free edge side under guards, as a kiosk would.

Used as ``python tests/edge_guard.py <edgemm CLI args…>`` by the boundary tests. Before any
edgemm import it (1) makes importing torch, transformers or optimum impossible and (2) installs
an audit hook that fails on any socket creation. After the command it prints, on stderr, one
line ``EDGE_GUARD {"modules": [...], "sockets": N}`` so tests can assert on it.
"""

from __future__ import annotations

import json
import sys

BLOCKED = ("torch", "transformers", "optimum", "torchvision", "torchaudio")
_sockets = []


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked on the edge side")
        return None


def _audit(event, args):
    if event in ("socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo"):
        _sockets.append(event)
        raise PermissionError(f"edge guard: {event} is not allowed")


def main() -> int:
    sys.meta_path.insert(0, _Blocker())
    sys.addaudithook(_audit)
    from edgemm.cli import main as cli_main

    code = 0
    try:
        cli_main(sys.argv[1:])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("EDGE_GUARD " + json.dumps({"modules": leaked, "sockets": len(_sockets)}), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
