"""Package discovery that pyproject.toml cannot express: export/ ships as edgemm.targets.

The recipes live in the repository's top-level ``export/`` folder (their one source); the
package-dir mapping in pyproject.toml installs them as the ``edgemm.targets`` package, which
``packages.find`` cannot discover because no ``edgemm/targets`` folder exists.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["edgemm", "edgemm.*"]), "edgemm.targets"])
