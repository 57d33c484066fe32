"""Opening and saving a notebook the way JupyterLab does (jupytext's contents manager)
leaves its tracked ``.py`` byte-identical: the header pins
``notebook_metadata_filter: -jupytext.text_representation``, so no version block is
added on save (issue 20). The browser check (tests/browser) does the same in a real lab."""

import asyncio
import shutil

import pytest

from workbench.core import paths

NOTEBOOKS = sorted(p.name for p in paths.NOTEBOOKS_DIR.glob("*.py"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_save_through_jupytext_leaves_the_file_unchanged(name, tmp_path):
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

    shutil.copy(paths.NOTEBOOKS_DIR / name, tmp_path / name)
    cm = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(
        root_dir=str(tmp_path))

    async def open_and_save():
        model = await cm.get(name, content=True, type="notebook")
        model["content"].cells[0].source += ""  # what an edit-free autosave sends
        await cm.save(model, name)

    asyncio.run(open_and_save())
    assert (tmp_path / name).read_bytes() == (paths.NOTEBOOKS_DIR / name).read_bytes()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_header_pins_the_metadata_filter(name):
    head = (paths.NOTEBOOKS_DIR / name).read_text().split("# ---", 2)[1]
    assert "#     notebook_metadata_filter: -jupytext.text_representation" in head
