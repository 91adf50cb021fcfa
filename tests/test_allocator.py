"""gshutdown.server.allocator: pinned glibc thresholds stop the heap's trim-and-refault cycle.

Each check runs in a fresh interpreter (the setting is process-wide and
cannot be undone) and counts minor page faults, which are deterministic,
rather than timing anything.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

# The allocation pattern of a 1 MiB body read in 256 KiB pieces: a few blocks
# just over glibc's initial mmap threshold, all freed at the end of each round.
_PROGRAM = """
import json, resource, sys
tuned = None
if sys.argv[1] == "tuned":
    from gshutdown.server import allocator
    tuned = allocator.fix_thresholds()
    again = allocator.fix_thresholds()
    assert again == tuned
elif sys.argv[1].startswith("server"):
    import gshutdown
    from gshutdown.server import allocator
    server = gshutdown.Server(("127.0.0.1", 0), lambda e, s: [], tune_malloc=sys.argv[1] == "server")
    server.start()
    server.close()
    tuned = allocator._done  # None: never asked for
def round_():
    pieces = [bytearray(300 * 1024) for _ in range(4)]
    joined = bytes(b"".join(pieces))
    del pieces, joined
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    round_()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return json.loads(out)


def test_fixed_thresholds_keep_freed_heap_instead_of_faulting_it_back() -> None:
    assert platform.libc_ver()[0] == "glibc", "the project's machines and CI run on glibc"
    default = _faults("default")
    tuned = _faults("tuned")
    assert tuned["tuned"] is True
    # Default glibc: each round maps or trims ~1.5 MiB and faults it back in
    # (hundreds of faults a round); pinned: the freed blocks are reused.
    assert default["faults"] > 200 * 100
    assert tuned["faults"] < 200 * 5


def test_server_start_applies_it_unless_disabled() -> None:
    default = _faults("server-untuned")
    tuned = _faults("server")
    # Untuned, whether glibc trims and refaults depends on where the pieces
    # land in a heap that importing gshutdown has already shaped (the module
    # docstring's "flipping between the two"): the fault count says nothing
    # about the server there, so the check is that it never set thresholds.
    assert default["tuned"] is None
    assert tuned["tuned"] is True
    assert tuned["faults"] < 200 * 5
