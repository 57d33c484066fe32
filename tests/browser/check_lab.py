"""Open a notebook in JupyterLab the way a user does, in a real (headless) Chromium.

What it does:

1. Copies ``notebooks/<name>.py`` into a scratch project (``WORKBENCH_HOME`` points there,
   so outputs cannot touch the real ``data/runs``; the model and corpus caches are
   linked in), with tiny parameters unless ``--as-is``.
2. Starts JupyterLab on a free localhost port with a random token and the repository's
   Jupyter config (``jupyter-config/``, as ``make lab`` does), its root the scratch
   project; workspaces and user settings live in the scratch folder too.
3. Starts Debian's ``chromium`` headless with ``--remote-debugging-port`` and drives it
   over the Chrome DevTools Protocol (``websocket-client``; no Selenium, no Playwright):
   waits for the file browser, **double-clicks** the notebook, checks that it opened as a
   notebook (not in the text editor), clicks **Run -> Run All Cells**, waits until every
   code cell has an execution count, and saves screenshots (``opened.png``, ``ran.png``).
4. Checks the outputs went to ``<project root>/data/runs/...`` and not under
   ``notebooks/`` (the kernel's working directory).

Usage::

    .venv/bin/python tests/browser/check_lab.py --out build/browser [--notebook 00_quickstart]

Exit status 0 when every check passed; the last line of output says what failed
otherwise. ``tests/browser/test_lab.py`` runs it under pytest and skips where no
Chromium is installed (CI).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Tiny parameters per notebook, so the check takes seconds (``--as-is`` keeps the file's).
TINY = {
    "00_quickstart": dict(model="tiny-llama", corpus="lee", seq_len=32, n_blocks=2,
                          batch_size=2),
    "08_fisher_uses": dict(model="tiny-llama", corpus="lee", corpus_b="wiki-excerpt",
                           seq_len=16, fisher_tokens=32, eval_tokens=32,
                           concentrations=[0.1, 0.5], seeds=[0, 1], steps_a=4,
                           fisher_every=1, steps_b=4, lrs_b=[1e-3], probe_every=1),
}


class CheckFailed(RuntimeError):
    """One of the checks did not hold."""


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll ``predicate()`` until it returns something truthy; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError, KeyError) as err:  # server or page not ready yet
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def with_parameters(source: str, params: dict) -> str:
    """Replace ``name = value`` lines of the ``parameters`` cell."""
    head, sep, rest = source.partition('# %% tags=["parameters"]\n')
    if not sep:
        raise CheckFailed("notebook has no parameters cell")
    cell, sep2, tail = rest.partition("\n# %%")
    for key, value in params.items():
        cell, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", cell, flags=re.M)
        if n != 1:
            raise CheckFailed(f"parameter {key!r} not found in the parameters cell")
    return head + sep + cell + sep2 + tail


# ----------------------------------------------------------------------------- CDP
class Page:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise CheckFailed(f"CDP {method} failed: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise CheckFailed(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def center_of(self, selector: str, text: str | None = None):
        """Centre (x, y) of the first visible element matching ``selector`` (and whose
        text is ``text``), or ``None``."""
        return self.js(f"""(() => {{
            for (const el of document.querySelectorAll({json.dumps(selector)})) {{
                if ({json.dumps(text)} !== null && el.textContent.trim() !== {json.dumps(text)})
                    continue;
                const r = el.getBoundingClientRect();
                if (r.width > 0 && r.height > 0) return [r.x + r.width / 2, r.y + r.height / 2];
            }}
            return null;
        }})()""")

    def click(self, xy, count: int = 1) -> None:
        """Real mouse events: ``count=2`` is a double-click (two press/release pairs)."""
        x, y = xy
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                          clickCount=n)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


# ----------------------------------------------------------------------------- the check
def run_check(out_dir: Path, notebook: str = "00_quickstart", as_is: bool = False,
              timeout: float = 300) -> dict:
    """Run the whole check; returns a dict of findings (raises :class:`CheckFailed`)."""
    browser = find_browser()
    if browser is None:
        raise CheckFailed(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="workbench-lab-"))
    procs: list[subprocess.Popen] = []
    findings: dict = {"notebook": notebook, "scratch": str(scratch)}
    try:
        (scratch / "notebooks").mkdir()
        # Share the model and corpus caches (they are caches, not outputs).
        (scratch / "data").mkdir()
        for cache in ("models", "corpora"):
            if (ROOT / "data" / cache).is_dir():
                (scratch / "data" / cache).symlink_to(ROOT / "data" / cache)
        source = (ROOT / "notebooks" / f"{notebook}.py").read_text(encoding="utf-8")
        if not as_is and notebook in TINY:
            source = with_parameters(source, TINY[notebook])
        (scratch / "notebooks" / f"{notebook}.py").write_text(source, encoding="utf-8")

        port, token = free_port(), secrets.token_hex(16)
        env = dict(os.environ, WORKBENCH_HOME=str(scratch),
                   JUPYTER_CONFIG_PATH=str(ROOT / "jupyter-config"),
                   JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
                   PYTHONPATH=str(ROOT))
        lab_cmd = [str(VENV_BIN / "jupyter"), "lab", "--no-browser", f"--port={port}",
                   "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
                   f"--ServerApp.root_dir={scratch}",
                   f"--LabApp.user_settings_dir={scratch / 'user-settings'}",
                   f"--LabApp.workspaces_dir={scratch / 'workspaces'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lab_cmd.append("--allow-root")
        lab_log = open(out_dir / "jupyterlab.log", "w")
        procs.append(subprocess.Popen(lab_cmd, env=env, cwd=scratch, stdout=lab_log,
                                      stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"

        def api(path: str):
            with urllib.request.urlopen(f"{base}{path}?token={token}", timeout=5) as resp:
                return json.loads(resp.read())

        wait_for(lambda: api("/api/status"), 90, "JupyterLab to start")
        settings = api("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
        viewers = settings["schema"]["properties"]["defaultViewers"].get("default", {})
        findings["default_viewers"] = viewers
        if viewers.get("python") != "Jupytext Notebook":
            raise CheckFailed(f"jupyter-config did not set the default viewer: {viewers}")

        dbg = free_port()
        procs.append(subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
             f"--remote-debugging-port={dbg}", f"--user-data-dir={scratch / 'chrome'}",
             "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def page_target():
            with urllib.request.urlopen(f"http://127.0.0.1:{dbg}/json/list", timeout=5) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        page = Page(wait_for(page_target, 60, "Chromium's debugging port"))
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                  deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=f"{base}/lab/tree/notebooks?token={token}")

        name = f"{notebook}.py"
        item = wait_for(lambda: page.center_of(".jp-DirListing-itemText", name), 90,
                        f"{name} in the file browser")
        page.click(item, count=2)  # the double-click a user does

        kind = wait_for(lambda: page.js("""(() => {
            const w = document.querySelector('.jp-MainAreaWidget:not(.lm-mod-hidden) .jp-Notebook,'
                + ' .jp-MainAreaWidget:not(.lm-mod-hidden) .jp-FileEditor');
            if (!w) return null;
            return w.classList.contains('jp-Notebook') ? 'notebook' : 'editor';
        })()"""), 60, "the document to open")
        findings["opened_as"] = kind
        if kind != "notebook":
            page.screenshot(out_dir / "opened.png")
            raise CheckFailed(f"double-click opened {name} in the text {kind}, not as a notebook")
        wait_for(lambda: page.js(
            "document.querySelectorAll('.jp-Notebook .jp-CodeCell').length") or None,
            30, "the notebook's cells")
        # Kernel started (the workbench kernel the notebook names) and idle.
        wait_for(lambda: [s for s in api("/api/sessions")
                          if s["kernel"]["execution_state"] == "idle"], 120, "an idle kernel")
        findings["kernel"] = api("/api/sessions")[0]["kernel"]["name"]
        time.sleep(1.0)
        page.screenshot(out_dir / "opened.png")

        run_menu = wait_for(lambda: page.center_of(".lm-MenuBar-itemLabel", "Run"), 30,
                            "the Run menu")
        page.click(run_menu)
        run_all = wait_for(lambda: page.center_of(".lm-Menu-itemLabel", "Run All Cells"), 30,
                           "Run All Cells in the Run menu")
        page.click(run_all)
        t0 = time.monotonic()

        def all_executed():
            prompts = page.js("""[...document.querySelectorAll(
                '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
                .map(p => p.textContent.trim())""")
            done = prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
            busy = [s for s in api("/api/sessions") if s["kernel"]["execution_state"] != "idle"]
            return prompts if done and not busy else None

        try:
            prompts = wait_for(all_executed, timeout, "every code cell to run", interval=1.0)
        finally:
            findings["run_seconds"] = round(time.monotonic() - t0, 1)
            # Show the end of the notebook (the table and the closing sentence).
            page.js("""(() => { const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
                if (cells.length) cells[cells.length - 1].scrollIntoView({block: 'end'}); })()""")
            time.sleep(1.0)
            page.screenshot(out_dir / "ran.png")
        findings["prompts"] = prompts
        # Save (Ctrl+S, as a user does after running): the tracked text file must come back
        # byte-identical (no jupytext version header, issue 20).
        target = scratch / "notebooks" / name
        before = target.stat().st_mtime_ns
        for kind in ("keyDown", "keyUp"):
            page.call("Input.dispatchKeyEvent", type=kind, key="s", code="KeyS",
                      modifiers=2, windowsVirtualKeyCode=83)
        findings["saved"] = bool(wait_for(lambda: target.stat().st_mtime_ns != before, 30,
                                          "the notebook to be saved"))
        findings["identical_after_save"] = target.read_text(encoding="utf-8") == source
        page.close()
        if not findings["identical_after_save"]:
            raise CheckFailed(f"saving {name} in JupyterLab changed the file")

        runs = scratch / "data" / "runs"
        outputs = sorted(str(p.relative_to(scratch)) for p in runs.rglob("*")
                         if p.is_file()) if runs.exists() else []
        findings["outputs"] = outputs
        if notebook == "00_quickstart":
            if "data/runs/quickstart/results.parquet" not in outputs:
                raise CheckFailed(f"no results under <root>/data/runs/quickstart: {outputs}")
        stray = [str(p.relative_to(scratch)) for p in (scratch / "notebooks").rglob("*")
                 if p.is_file() and p.name != name and ".ipynb_checkpoints" not in p.parts]
        findings["files_under_notebooks"] = stray
        if stray:
            raise CheckFailed(f"the notebook wrote under notebooks/: {stray}")
        return findings
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "browser"),
                        help="folder for the screenshots and the JupyterLab log")
    parser.add_argument("--notebook", default="00_quickstart")
    parser.add_argument("--as-is", action="store_true",
                        help="keep the notebook's own parameters (real model: slower)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for Run All")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        findings = run_check(out, args.notebook, args.as_is, args.timeout)
    except CheckFailed as err:
        print(f"check_lab: FAILED: {err} (screenshots and log in {out})")
        return 1
    print(json.dumps(findings, indent=2))
    print(f"check_lab: OK: {args.notebook}.py opened as a notebook by double-click, ran all "
          f"cells in {findings['run_seconds']} s; screenshots {out / 'opened.png'}, "
          f"{out / 'ran.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
