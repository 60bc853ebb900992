"""Every registered component against its kind's contract (lmzoo/plugins/devtools/contracts.py):
a new component is tested here for free."""
from lmzoo.plugins.devtools.contracts import *  # noqa: F401,F403
