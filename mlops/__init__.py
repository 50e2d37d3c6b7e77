"""The platform. Importing it pins torch's CPU-capability dispatch first (see mlops/runtime.py): every entry
point (the CLI, sweep workers, pods, the server) imports ``mlops`` before torch computes anything."""

from mlops.runtime import pin_dispatch

pin_dispatch()
