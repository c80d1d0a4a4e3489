"""python -m workbench.zoo: build the demo zoo (if needed) and print its summary table."""

import time

from . import build, summary

t0 = time.perf_counter()
built = build()
print(f"built {len(built)} zoo models in {time.perf_counter() - t0:.1f} s")
print(summary().to_string(float_format=lambda v: f"{v:.4g}"))
