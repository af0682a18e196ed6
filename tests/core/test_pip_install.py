"""A non-editable `pip install` ships the default config with the package: the build copies
config/simplebev.yaml next to simplebev_core/config.py, and from outside the repository, with
only the install on PYTHONPATH, load_config(), the parameter descriptions and the generated
reference read that copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Everything setup.py builds from; the install is made from a copy of these so that the build
# writes nothing (build/, egg-info) into the checkout.
BUILD_INPUTS = ("setup.py", "LICENSE", "config/simplebev.yaml", "simplebev_core",
                "simplebev_ros", "training")
PROBE = """
import json
import simplebev_core
from simplebev_core import config, config_doc
config.load_config()
notes, reference = config.describe_keys(), config_doc.reference()
print(json.dumps({"module": simplebev_core.__file__, "config": str(config.default_config_path()),
                  "described": notes, "reference_has_them": all(
                      note.replace("|", "\\|") in reference for note in notes.values())}))
"""


def copy_build_inputs(destination: Path) -> None:
    for name in BUILD_INPUTS:
        source, target = REPO / name, destination / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_pip_install_ships_the_default_config(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"
    copy_build_inputs(source)
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--target", str(site), str(source)])

    # Only the install is importable first; no ament index that could supply the file instead.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    probe = run([sys.executable, "-c", PROBE], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)})
    facts = json.loads(probe.stdout.splitlines()[-1])

    assert Path(facts["module"]).is_relative_to(site)
    installed = site / "simplebev_core" / "simplebev.yaml"
    assert Path(facts["config"]) == installed
    # A copy the build made of the one source, not a second hand-kept file.
    assert installed.read_text() == (REPO / "config" / "simplebev.yaml").read_text()
    assert facts["described"]["model.encoder"] and facts["reference_has_them"]
