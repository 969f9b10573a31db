"""edgemm's export recipes, one TOML per deployment target.

This folder is their one source. The build maps it into the package as ``edgemm.targets``
(see ``setup.py``), so ``edgemm export --target NAME`` finds the same files from a source
checkout, an editable install and a wheel; :mod:`edgemm.recipes` reads them.
"""
