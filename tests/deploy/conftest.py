"""One packaging run shared by the deploy tests: building the Lambda zip vendors boto3 (~2k files)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_packager() -> ModuleType:
    """deploy/package.py is a script, not part of the installed package: load it by path."""
    spec = importlib.util.spec_from_file_location("lakehouse_deploy_package", ROOT / "deploy" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def packager() -> ModuleType:
    return load_packager()


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory, packager: ModuleType) -> Path:
    out = tmp_path_factory.mktemp("dist")
    packager.build(out)
    return out
