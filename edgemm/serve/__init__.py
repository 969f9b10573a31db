"""The kiosk runtime: a torch-free local HTTP API and kiosk page over one bundle.

Start it with ``edgemm serve`` (see :mod:`edgemm.serve.server`); the pieces are the request
parser (:mod:`~edgemm.serve.inputs`), the micro-batcher (:mod:`~edgemm.serve.batcher`), the model
host with readiness and hot swap (:mod:`~edgemm.serve.host`), metrics and the ASGI app.
"""
