"""The optional libraries ``kcnn doctor`` needs, checked before any work (``kcnn[doctor]``)."""

from __future__ import annotations

import importlib.util

from keras_cnn.errors import UserError

# import name -> distribution name, for the message.
DOCTOR_LIBRARIES = {"cleanlab": "cleanlab", "sklearn": "scikit-learn", "threadpoolctl": "threadpoolctl",
                    "cleanvision": "cleanvision"}
INSTALL_HINT = "pip install 'kcnn[doctor]'"


def require_doctor_libraries() -> None:
    """Refuse with one line naming the install command when a library of ``kcnn[doctor]`` is missing."""
    missing = [distribution for module, distribution in DOCTOR_LIBRARIES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"kcnn doctor needs {', '.join(missing)}: {INSTALL_HINT}")
