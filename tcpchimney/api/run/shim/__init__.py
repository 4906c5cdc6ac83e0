"""The directory ``chimney run`` puts first on the program's PYTHONPATH: ``sitecustomize`` loads
``chimney_socket`` (standard library only), then any ``sitecustomize`` the interpreter had before."""

import os

SHIM_DIR = os.path.dirname(os.path.abspath(__file__))
