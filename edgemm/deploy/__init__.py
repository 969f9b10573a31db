"""Bundle lifecycle on the device: signed ``.edgemm`` archives, install, atomic switch, rollback.

* :mod:`~edgemm.deploy.keys` — Ed25519 key pairs (``edgemm keygen``).
* :mod:`~edgemm.deploy.archive` — ``edgemm pack`` and our own archive reader.
* :mod:`~edgemm.deploy.store` — the device store that ``edgemm install`` writes and
  ``edgemm serve --store`` reads.
"""
