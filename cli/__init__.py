"""The `dydis` command line.

OpenMP threads that wait for work spin by default; when the cores are shared with anything
else (a second training process, a test runner, another user), torch's intra-op threads then
spin against each other and a small model's step slows down up to a hundredfold (measured on
2 cores, tiny preset, batch 16: 14.7 s per step spinning, 0.70 s waiting passively, 0.15 s on
one thread). The CLI asks for passive waiting before torch is imported; an explicit
OMP_WAIT_POLICY wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
