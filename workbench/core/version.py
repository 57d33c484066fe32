"""The package's version and folder, for records (imported by the façade, never the reverse)."""

from pathlib import Path

__version__ = "0.1.0"

#: The folder of the ``workbench`` package actually imported.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
