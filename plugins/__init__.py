"""lmzoo's built-in plugins, installed as `lmzoo.plugins` (this directory is mapped to that
name in pyproject.toml, so no generic top-level `plugins` package is ever installed).

The rule: a new component goes in `plugins/<family>`; a new stage or recipe section is a new
package here; the kernel (`lmzoo/`) changes only when a new component kind appears. The
kernel loads these modules by name (`lmzoo.hooks.BUILTINS`) and never imports them itself.
"""
