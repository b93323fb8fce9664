"""Programmatic dependent launch (Hopper): a kernel launched with ``launch_pdl`` may start while the
previous kernel of the stream still runs; it calls ``pdl_enter`` first, which lets the NEXT kernel
launch too and then waits (``griddepcontrol.wait``) until the previous kernel has finished and its
writes are visible. Every kernel of a PDL chain waits before it touches memory and before it ends,
so ordering stays transitive (kernel n+2 starts reading only after n+1, hence n, finished); what
overlaps is the launch latency and the previous kernel's tail. Both instructions are no-ops when the
kernel was launched without the attribute. Off in the interpreter and on triton without GDC.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:  # triton >= 3.4 on NVIDIA
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_PDL = True
except ImportError:  # pragma: no cover - older triton
    HAS_PDL = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


def pdl_args(pdl: bool) -> dict:
    """Launch keywords: ``PDL`` (the kernel's constexpr) and triton's ``launch_pdl`` when enabled."""
    on = bool(pdl and HAS_PDL and not triton.knobs.runtime.interpret)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}
