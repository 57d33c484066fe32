"""JupyterLab configuration of the workbench, read by ``make lab``.

``make lab`` puts this folder on ``JUPYTER_CONFIG_PATH`` (your own ``~/.jupyter`` still
applies and wins), so nothing outside the repository is touched:

* ``lab/settings/overrides.json`` (the lab's default settings, here: open ``.py`` text
  notebooks with jupytext's "Jupytext Notebook" viewer on a double click instead of the
  text editor) is read from :attr:`LabApp.app_settings_dir`, which points here;
* the server's root is the repository, and the file browser starts in ``notebooks/``.
"""

from pathlib import Path

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

c.LabApp.app_settings_dir = str(HERE / "lab" / "settings")
c.ServerApp.root_dir = str(ROOT)
c.LabApp.default_url = "/lab/tree/notebooks"
