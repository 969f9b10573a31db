"""Package discovery that pyproject.toml cannot express: export/ ships as edgemm.targets.

The recipes live in the repository's top-level ``export/`` folder (their one source); the
package-dir mapping in pyproject.toml installs them as the ``edgemm.targets`` package, which
no discovery finds because no ``edgemm/targets`` folder exists. Namespace discovery, so that a
package folder without ``__init__.py`` still ships (``tests/packaging`` checks every module is in
the wheel).
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["edgemm", "edgemm.*"], exclude=["*.__pycache__"]), "edgemm.targets"])
