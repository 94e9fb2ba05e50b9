"""Which worker process owns what, when a server runs `workers = N` (see
docs/scaling.md and `stripe.io.workers`).

Two rules, both pure and shared by every worker and the supervisor:

- **A peer belongs to one worker**, chosen from its public key
  (`owner_of`): every process computes the same answer from the config
  alone, and a peer added or removed by a reload does not move the others.
- **A session index names its worker** in its top bits (`session_index`,
  `worker_of`): the kernel steers each transport datagram by the receiver
  index in its header (`stripe.io.reuseport`), so a session's datagrams
  reach the process that holds its keys without any lookup.  The other
  bits stay random, as WireGuard's indices are.

A handshake initiation names no session: the kernel hands it to any
worker, which reads it far enough to learn the initiator's key and passes
it to the owner (`Endpoint.handoffs_to_send`, `Endpoint.receive_handoff`).
"""

from __future__ import annotations

import hashlib

# Four bits of a 32-bit session index: up to 16 workers, 2**28 random
# indices each (a server holds at most a few per peer).
WORKER_BITS = 4
MAX_WORKERS = 1 << WORKER_BITS
WORKER_SHIFT = 32 - WORKER_BITS
_RANDOM_MASK = (1 << WORKER_SHIFT) - 1


def owner_of(public_key: bytes, workers: int) -> int:
    """The worker that serves the peer with this public key (0..workers-1).
    A hash, not the key's own bytes: keys are random, but a hash keeps the
    share even if someone picks theirs."""
    if workers <= 1:
        return 0
    digest = hashlib.sha256(b"stripe worker " + public_key).digest()
    return int.from_bytes(digest[:4], "big") % workers


def session_index(worker: int, random32: int) -> int:
    """A session index for `worker`: its number in the top bits, the rest random."""
    if not 0 <= worker < MAX_WORKERS:
        raise ValueError(f"worker {worker} out of range 0..{MAX_WORKERS - 1}")
    return (worker << WORKER_SHIFT) | (random32 & _RANDOM_MASK)


def worker_of(index: int) -> int:
    """The worker a session index names (what the kernel program computes)."""
    return (index & 0xFFFFFFFF) >> WORKER_SHIFT
