"""Packaging: plugins/ installs as lmzoo.plugins, and every package directory is listed."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {"lmzoo": "lmzoo", "lmzoo.plugins": "plugins"}
    found = set()
    for top, name in (("lmzoo", "lmzoo"), ("plugins", "lmzoo.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert set(cfg["packages"]) == found, "add new package directories to [tool.setuptools] packages"
    assert "plugins" not in cfg["packages"]
