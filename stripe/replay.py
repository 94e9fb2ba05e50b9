"""Anti-replay window for 64-bit message counters.

A sliding bitmap in the style of RFC 6479 (and wireguard-go's
`replay/replay.go`): a ring of 64-bit blocks, where bit `c % 64` of block
`(c // 64) % BLOCKS` records whether counter `c` was seen.

Empty state: nothing seen, `highest == -1`.
Invariants:
- every counter <= highest - WINDOW_SIZE is rejected (too old);
- a counter is accepted by `accept` at most once;
- `check` never changes state, so a caller can test before spending an AEAD
  call and `accept` only after the packet authenticated.

The window is wide because striping reorders by design: with a 40 ms delay
skew at 100k packets/s, counters arrive ~4000 apart.
"""

from __future__ import annotations

BLOCK_BITS = 64
BLOCKS = 1024
WINDOW_SIZE = (BLOCKS - 1) * BLOCK_BITS  # 65472 counters
_BLOCK_MASK = BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1
COUNTER_LIMIT = 2**64 - 1


class ReplayWindow:
    __slots__ = ("_blocks", "highest")

    def __init__(self) -> None:
        self._blocks = [0] * BLOCKS
        self.highest = -1

    def check(self, counter: int) -> bool:
        """True when `counter` is new and inside the window."""
        if counter >= COUNTER_LIMIT:
            return False
        if counter > self.highest:
            return True
        if counter + WINDOW_SIZE <= self.highest:
            return False
        block = (counter >> 6) & _BLOCK_MASK
        return not (self._blocks[block] >> (counter & _BIT_MASK)) & 1

    def accept(self, counter: int) -> bool:
        """Record `counter`; False (and no change) when it is a replay or too old."""
        if not self.check(counter):
            return False
        self.mark(counter)
        return True

    def mark(self, counter: int) -> None:
        """Record `counter`, which `check` just passed (the receive path checks
        before the AEAD and records after it, with nothing in between)."""
        blocks = self._blocks
        highest = self.highest
        if counter > highest:
            target = counter >> 6
            current = highest >> 6 if highest >= 0 else -1
            if target != current:
                # Clear the blocks we slide over (at most all of them).
                for i in range(1, min(target - current, BLOCKS) + 1):
                    blocks[(current + i) & _BLOCK_MASK] = 0
            self.highest = counter
        block = (counter >> 6) & _BLOCK_MASK
        blocks[block] |= 1 << (counter & _BIT_MASK)
