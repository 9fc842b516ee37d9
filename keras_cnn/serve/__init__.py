"""``kcnn serve``: TF Serving's REST API and a page for an exported model.

Modules, one job each: ``models`` (the export's versions, loaded with ``kcnn predict``'s
loader), ``rest_json`` (TF Serving's request and response JSON), ``batching`` (server-side
batching on one model thread), ``limits`` (body size, requests in flight, deadlines),
``answers`` (kcnn's own per-image answers and the model description for the page), ``app``
(the routes), ``page`` (the HTML page), ``logs`` (uvicorn's lines in kcnn's shape) and
``server`` (uvicorn, SIGTERM drain).  The web stack is the ``serve`` extra; this module
imports none of it, so the command line can say what is missing in one line.
"""

from __future__ import annotations

import importlib.util

from keras_cnn.errors import UserError

# import name -> the package that provides it (all in the "serve" extra)
SERVE_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
INSTALL_HINT = "pip install 'kcnn[serve]'"


def require_serve_extra() -> None:
    """``UserError`` naming the install command when the ``serve`` extra is not installed."""
    missing = [package for module, package in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"kcnn serve needs {', '.join(missing)}: {INSTALL_HINT}")
