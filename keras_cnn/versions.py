"""The versions a result depends on: kcnn, Python, the libraries and the platform.

Recorded in every run's ``config.json`` and every export's ``kcnn.json``, so a result can
be traced to what made it.
"""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on (imported lazily)."""
    from importlib import metadata

    import keras_cnn

    versions = {"kcnn": keras_cnn.__version__, "python": platform.python_version()}
    for distribution in ("tensorflow", "keras", "numpy", "pandas", "pillow", "tensorflow-hub"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    versions["platform"] = platform.platform()
    return versions
