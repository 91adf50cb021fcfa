"""Fixed glibc malloc thresholds, so that request bodies do not cost page faults.

Why: CPython takes every object over 512 bytes, such as each piece of a
request body, from the C allocator. glibc's defaults adapt: a block over the
mmap threshold (128 KiB at first) is mapped and unmapped on its own, and
freeing one raises that threshold to its size and the trim threshold to twice
that. A server reading 1 MiB bodies in 256 KiB pieces then sits right at the
trim threshold: depending on where in the heap a piece lands, each request may
end by giving the top of the heap back to the kernel (``brk``) and the next
begin by faulting it in again, page by page. Measured on the 1 MiB POST
benchmark: about 490 page faults per request and 700 instead of 3,200
requests/s, flipping between the two from one run to the next.

``fix_thresholds()`` pins both thresholds at values glibc's own adaptation
could reach (mmap at 4 MiB, trim at twice that): the heap keeps up to 8 MiB
of freed top instead of returning it after every request. It is process-wide,
done once, and does nothing on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: Blocks up to this size come from the heap, in bytes (glibc's dynamic maximum is 32 MiB).
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Freed heap top kept before it is returned to the kernel, in bytes (glibc's rule: twice the above).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_done: bool | None = None


def fix_thresholds() -> bool:
    """Pin glibc's mmap and trim thresholds (once per process); True if they are set.

    False on a C library other than glibc, or if ``mallopt`` refused.
    """
    global _done
    if _done is None:
        _done = False
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                # mallopt returns 1 on success.
                _done = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):
                pass
    return _done
