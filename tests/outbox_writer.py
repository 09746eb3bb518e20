"""Child for the kill -9 test: put batches for ever, print each seq once put_many returned (durable)."""
from __future__ import annotations

import hashlib
import os
import sys

from lited.service.outbox import Outbox


def payload_for(seq: int) -> bytes:
    """Derivable from seq alone: 32 B to 3 KB."""
    return hashlib.sha256(str(seq).encode()).digest() * (1 + seq % 97)


if __name__ == "__main__":
    ob = Outbox(sys.argv[1], max_bytes=int(sys.argv[2]), segment_bytes=int(sys.argv[3]))
    while True:
        first = ob.next_seq   # the only writer: the batch gets first, first + 1, ...
        seqs = ob.put_many([(f"lited/dev1/crops/cam{s % 3}", b"", payload_for(s)) for s in range(first, first + 3)])
        assert seqs == list(range(first, first + 3)), (seqs, first)
        os.write(1, b"".join(b"%d\n" % s for s in seqs))
