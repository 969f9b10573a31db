"""TensorRT engines: shape profiles, build plans for TensorRT 10 and 11, the build-log gate, the build
itself, ``trtexec`` equivalents and adding engines to a bundle.

The build side imports ``tensorrt`` lazily (through :func:`edgemm._deps.require`), so everything
that does not talk to the builder — profiles, plans, cache keys, the log gate, the ``trtexec``
command — works and is tested on machines without TensorRT. The run side (compatibility check,
native backend) lives in :mod:`edgemm.runtime.trt_compat` and
:mod:`edgemm.runtime.backends.tensorrt` because the kiosk must not need this package.
"""

from __future__ import annotations
